"""Child side: the launcher's privileged setup and its supervision of the run.

``confine`` runs as root (or namespace root): mounts, rlimits, nice, then the uid change and
no_new_privs, after which the process is the sandboxed user. ``alarm``, ``reaper`` and ``finish``
make sure that nothing of the run outlives it. Runs inside the sandbox (see ``child.py``):
stdlib only, and siblings are imported only as ``from .module import name``.
"""

import ctypes
import os
import resource
import signal


def syscalls():
    """mount, umount and prctl from libc, raising OSError when they fail."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def check(ret, what):
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), what)

    def mount(src, dst, fstype, flags, data):
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), dst)

    def umount(path):
        check(libc.umount2(path.encode(), 2), path)  # MNT_DETACH

    def prctl(option, arg):
        check(libc.prctl(option, arg, 0, 0, 0), "prctl")

    return mount, umount, prctl


def mounts(cfg, mount, umount):
    """Private tmpfs over scratch dirs, hidden dirs and the work dir; bind the keeps back."""
    nosuid, nodev, noexec, bind, rec = 2, 4, 8, 4096, 16384
    flags = nosuid | nodev | noexec
    os.umask(0o022)
    scratch = [p for p in cfg["scratch"] if os.path.isdir(p) and not os.path.islink(p)]
    keeps = [k for k in cfg["keep"] if os.path.isdir(k)]
    small = "size=%dm,mode=1777" % cfg["scratch_mb"]
    staged = []
    # Stage the keeps (the Python installation) on the first scratch dir that holds none of them.
    stage_root = next((s for s in scratch if not any(k == s or k.startswith(s + "/") for k in keeps)), None)
    if keeps and stage_root is not None:
        mount("tmpfs", stage_root, "tmpfs", flags, small)
        for i, k in enumerate(keeps):
            where = "%s/.keep%d" % (stage_root, i)
            os.mkdir(where, 0o700)
            mount(k, where, None, bind | rec, None)
            staged.append((k, where))
    for s in scratch:
        if s != stage_root or not staged:
            mount("tmpfs", s, "tmpfs", flags, small)
    for h in cfg["hide"]:
        if os.path.isdir(h) and not os.path.islink(h):
            mount("tmpfs", h, "tmpfs", flags, "size=1m,mode=0755")
    for k, where in staged:
        os.makedirs(k, 0o755, exist_ok=True)
        mount(where, k, None, bind | rec, None)
        umount(where)
        os.rmdir(where)
    work = cfg["workdir"]
    os.makedirs(work, 0o755, exist_ok=True)
    opts = "size=%dm,mode=0700" % cfg["disk_mb"]
    if cfg["uid"] is not None:
        opts += ",uid=%d,gid=%d" % (cfg["uid"], cfg["uid"])
    mount("tmpfs", work, "tmpfs", flags, opts)


def confine(cfg):
    """Everything privileged, then drop it: after this the process is the sandboxed user."""
    mount, umount, prctl = syscalls()
    for name in cfg["preimport"]:
        try:
            __import__(name)
        except Exception:
            pass
    if cfg["mounts"]:
        mounts(cfg, mount, umount)
    for name, (soft, hard) in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    try:
        os.nice(cfg["nice"])
    except OSError:
        pass
    uid = cfg["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
    prctl(4, 0)  # PR_SET_DUMPABLE = 0: no ptrace, no /proc/<pid>/mem or fd of the test process
    prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL (a uid change cleared unshare's --kill-child)
    os.chdir(cfg["workdir"])
    os.umask(0o077)
    return prctl


def alarm(seconds, child=None):
    """Backstop deadline, also when the trainer is gone: kill the candidate, exit 124."""

    def fire(signum, frame):
        if child is not None:
            try:
                os.kill(child[0], 9)
            except OSError:
                pass
        os._exit(124)

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


def reaper(prctl):
    """Adopt orphaned descendants and reap every child as it exits: nothing of the run is left
    to the machine's init (whose slow reaping would keep the slot's uid over its nproc)."""
    statuses = {}

    def reap(signum, frame):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = status

    try:
        prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass
    signal.signal(signal.SIGCHLD, reap)
    return statuses


def finish(cfg, child, code):
    """Kill and reap what the program left behind, then exit with `code`."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        os.kill(child, 9)
    except OSError:
        pass
    if cfg["kill_all"]:  # a dedicated uid or a pid namespace: -1 is only the run's processes
        try:
            os.kill(-1, 9)
        except OSError:
            pass
    while True:
        try:
            if os.waitpid(-1, 0 if cfg["kill_all"] else os.WNOHANG)[0] == 0:
                break
        except OSError:
            break
    os._exit(code)


