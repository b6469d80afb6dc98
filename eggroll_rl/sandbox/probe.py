"""What this machine can give the sandbox: namespaces (as root or inside a user namespace),
throwaway uids, a readable stdlib, and which paths to hide; summed up as an :class:`Isolation`."""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .api import Isolation, SandboxError

log = logging.getLogger(__name__)

# The folder that holds the top-level package (one level up per dot in this module's name): the
# checkout, or site-packages when installed from a wheel. Hidden from programs, like the source.
PROJECT_ROOT = Path(__file__).resolve().parents[__name__.count(".")]
DEFAULT_UID_BASE = 61000
# World-writable places (and /run, for its sockets), each replaced by a private, size-capped
# tmpfs in namespace mode.
SCRATCH = ("/dev/shm", "/run", "/tmp", "/var/tmp")
# Never hidden, nor anything that contains them (a trainer started from / or /usr).
_SYSTEM_DIRS = ("/bin", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")
# Imported by the launcher before it drops privileges when the stdlib is not readable by the
# sandbox uid (e.g. a pyenv Python under /root, without a mount namespace to bind it back in).
_PREIMPORT = (
    "math re collections itertools functools heapq bisect string typing random statistics "
    "fractions decimal datetime operator copy hashlib json array textwrap numbers enum "
    "dataclasses io threading time"
).split()


def probe(
    workers: int, namespaces: bool | None, drop_privileges: bool, hide: Sequence[str], uid_base: int | None
) -> tuple[Isolation, list[int]]:
    """What a sandbox of `workers` slots gets here, and the lock fds of the uids it claimed
    (to be closed when the sandbox closes). Logs a warning when protections are missing."""
    root = os.geteuid() == 0
    missing = []
    python = os.environ.get("EGGROLL_SANDBOX_PYTHON") or os.path.realpath(sys.executable)
    prefix: list[str] = []
    setpriv = shutil.which("setpriv")
    if setpriv:
        prefix = [setpriv, "--pdeathsig", "KILL", "--"]
    ns = user_ns = False
    unshare = shutil.which("unshare")
    if namespaces is not False and unshare:
        flags = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--"]
        if not root:
            flags = ["--user", "--map-root-user", *flags]
        if _probe_namespaces([unshare, *flags]):
            prefix = [*prefix, unshare, *flags]
            ns, user_ns = True, not root
    if not ns:
        if namespaces:
            raise SandboxError("namespaces requested but `unshare --net --pid --mount` does not work here")
        missing.append("no network/pid/mount namespaces (unshare unavailable or not permitted)")
    uids: tuple[int, ...] = ()
    locks: list[int] = []
    if root and drop_privileges:
        uids, locks = _claim_uids(workers, uid_base)
    elif not root and not user_ns:
        missing.append("programs run as the trainer's user (no namespaces, not root)")
    elif root:
        missing.append("privileges not dropped (drop_privileges=False)")
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    hidden, keep = _hide_and_keep(hide, stdlib)
    preimport: tuple[str, ...] = ()
    if uids and not ns and not _others_can_read(stdlib):
        preimport = tuple(_PREIMPORT)
        missing.append(f"stdlib {stdlib} unreadable by the sandbox uid: common modules preimported")
    iso = Isolation(
        python=python, namespaces=ns, user_namespace=user_ns, uids=uids,
        hide=tuple(hidden) if ns else (), keep=tuple(keep) if ns else (), preimport=preimport,
        prefix=tuple(prefix), missing=tuple(missing),
    )
    if missing:
        log.warning("sandbox is weaker on this machine: %s", "; ".join(missing))
    return iso, locks


def _hide_and_keep(extra: Sequence[str], stdlib: str) -> tuple[list[str], list[str]]:
    """The directories to cover with an empty tmpfs (defaults and `extra`, never a system dir),
    and the parts of the Python installation to bind back in because they lie under one."""
    hide: list[str] = []
    for h in [*_default_hide(), *extra]:
        h = os.path.realpath(h)
        if h in hide or any(_is_within(s, h) for s in _SYSTEM_DIRS):
            continue
        if not any(_is_within(h, s) for s in SCRATCH):  # scratch dirs are replaced anyway
            hide.append(h)
    covered = [*hide, *SCRATCH]
    base_prefix = os.path.realpath(sys.base_prefix)
    keep = sorted(p for p in {base_prefix, stdlib} if any(_is_within(p, h) for h in covered))
    keep = [k for k in keep if not any(_is_within(k, o) and k != o for o in keep)]
    return hide, keep


def _default_hide() -> list[str]:
    hide = ["/root", "/home", str(Path.home()), str(PROJECT_ROOT), os.getcwd()]
    for var in ("HF_HOME", "XDG_CACHE_HOME", "EGGROLL_RL_CACHE"):
        if os.environ.get(var):
            hide.append(os.environ[var])
    hide += [p for p in os.environ.get("EGGROLL_SANDBOX_HIDE", "").split(":") if p]
    return hide


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _probe_namespaces(prefix: list[str]) -> bool:
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _others_can_read(path: str) -> bool:
    """Whether a user with no relation to the owner can reach and list `path`."""
    p = Path(path)
    try:
        for part in [*reversed(p.parents), p]:
            mode = part.stat().st_mode
            if not mode & 0o001:
                return False
        return bool(p.stat().st_mode & 0o004)
    except OSError:
        return False


def _claim_uids(count: int, base: int | None) -> tuple[tuple[int, ...], list[int]]:
    """`count` uids that no user has and no other sandbox holds, from `base`
    (``EGGROLL_SANDBOX_UID_BASE``, else 61000), with their lock fds."""
    base = base or int(os.environ.get("EGGROLL_SANDBOX_UID_BASE", DEFAULT_UID_BASE))
    uids: list[int] = []
    locks: list[int] = []
    uid = base
    while len(uids) < count and uid < base + 10_000:
        if not _uid_in_use(uid):
            lock = _claim_uid(uid)
            if lock is not None:
                uids.append(uid)
                locks.append(lock)
        uid += 1
    if len(uids) < count:
        for fd in locks:
            os.close(fd)
        raise SandboxError(f"no free sandbox uids from {base} (EGGROLL_SANDBOX_UID_BASE)")
    return tuple(uids), locks


def _uid_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _claim_uid(uid: int) -> int | None:
    """An flock on /tmp/eggroll-sandbox-uid-<uid>.lock, held while a Sandbox (of any process on
    this machine) uses the uid: two sandboxes never share a uid, so never each other's nproc
    budget or process sweep. The kernel drops the lock when its holder dies."""
    path = os.path.join(tempfile.gettempdir(), f"eggroll-sandbox-uid-{uid}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
