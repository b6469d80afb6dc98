"""Run untrusted, model-written Python: one throwaway process tree per program, killed on time.

A population of perturbed models writes thousands of programs per hour; some loop forever, fork,
eat memory, fill the disk, open sockets or touch files. Every program here runs like this:

    trainer thread ──Popen──▶ setpriv --pdeathsig KILL          (dies with the trainer thread)
                              └▶ unshare --net --pid --mount --mount-proc --fork
                                 └▶ python -I -S -B -c <launcher>          pid 1 of a new pid namespace
                                      mounts, rlimits, nice, setuid, no_new_privs
                                      ├─ tests mode: the *test process* (trusted test code only)
                                      │    └▶ fork: the *candidate process* (the model's program)
                                      └─ stdio mode: waits for └▶ fork: the program, stdin = the case

What it defends against, and how
--------------------------------
* Own session and process group (``start_new_session``); a wall-clock timeout in the trainer that
  SIGKILLs the whole group, then reaps it. Inside a pid namespace the launcher is pid 1, and when
  it dies the kernel kills every process of the namespace, including ones that called setsid()
  or double-forked. The launcher also arms its own alarm (timeout + 1 s) as a backstop if the
  trainer itself has died.
* rlimits on every process: address space (``memory_mb``), CPU seconds, processes/threads
  (``nproc``), file size, open files, no core dumps; and ``nice`` so the trainer keeps the CPU.
* Privileges: when the trainer runs as root (where RLIMIT_NPROC is ignored), programs run as an
  unprivileged uid that is not in /etc/passwd, one uid per pool slot (61000 and up,
  ``EGGROLL_SANDBOX_UID_BASE``; each claimed with a lock file, so two trainers on one machine
  never share one), so a fork bomb only exhausts its own slot's process budget and can signal
  nothing but its own processes; no supplementary groups; PR_SET_NO_NEW_PRIVS (setuid binaries
  gain nothing); not dumpable. As a normal user, an unprivileged user namespace gives the same
  per-sandbox process accounting.
* Cleanup: the launcher is the subreaper of everything the program forks, reaps it, and kills
  what is left (``kill(-1)`` as the sandbox uid or inside the namespace) before it exits; the
  trainer then checks that no process of the slot's uid survives before the slot is reused.
* Filesystem (mount namespace): fresh size-capped tmpfs over /tmp, /var/tmp, /dev/shm, /run
  and the working directory, so nothing the program writes reaches the disk or survives it, and
  no Unix socket of the machine (dbus, vLLM's IPC, databases) is reachable;
  empty tmpfs over home directories (/root, /home, ``~``), the project tree, the trainer's
  working directory, HF_HOME and ``EGGROLL_SANDBOX_HIDE`` paths, so the program cannot read the
  project's source, tokens or ~/.ssh. Only the Python installation is bound back in.
* Network: a new network namespace (only a down loopback): no connection to anything, including
  listeners on the trainer's 127.0.0.1.
* Environment: an allow-list (PATH, HOME/TMPDIR = the work dir, locale, thread counts = 1);
  nothing from the trainer's environment (no tokens, HF_*, WANDB_*). ``python -I -S``: no
  site-packages, no PYTHON* variables, no user site. The stdlib only.
* Output: stdout and stderr each capped at ``output_bytes``; past it the tree is killed.
* A fresh temporary working directory per run, removed afterwards (also after a timeout).

A pass must be proven by the test process, never by an exit code. The model's program runs in
its own process (the candidate process); the dataset's tests run in a separate process that
never executes a line of model code. Test code calls the candidate's functions through stubs
that send the arguments over a pipe and get the return value back as *plain data* (None, bool,
int, float, complex, str, bytes and lists/tuples/dicts/sets of them, checked by exact type), so:
``sys.exit(0)`` / ``os._exit(0)`` / a crash before or during the tests just means the tests that
had not yet reported pass are failed; an object whose ``__eq__`` always says True cannot cross
the pipe; redefining ``check``, an assert helper, ``builtins.abs`` or ``math.isclose`` changes
only the candidate's own interpreter; and the candidate never sees the tests, the expected
values, or the per-run random nonce that the test process puts on every line of its report
(written to a pipe only the test process holds; the report is not read from stdout). The
candidate process cannot ptrace or read the memory of the test process (both are non-dumpable
after the uid change), and a pid-namespace init only receives signals it has handlers for.

What it does NOT defend against
-------------------------------
* Kernel exploits and hardware side channels: this is process isolation on a shared kernel, not
  a VM (no seccomp filter either). Use a VM or gVisor for hostile, adaptive attackers.
* Reading world-readable files that are not hidden (/etc, /usr, the Python installation, other
  directories you do not list in ``EGGROLL_SANDBOX_HIDE``).
* Aggregate memory: each process is capped at ``memory_mb``, so one sandbox can use up to
  ``nproc`` × ``memory_mb`` (plus its tmpfs), times the number of pool workers. There is no
  cgroup; size the limits to the machine.
* CPU: a program may use all cores for up to its timeout (niced).
* Test semantics: tests that check in-place mutation of an argument, or functions that return
  non-plain values (class instances, generators), fail by design; test code can only reach the
  candidate's functions (not its constants; calling a class fails, an instance is not plain
  data); a candidate function named like a builtin the tests use is not reachable (the builtin
  wins). Programs get the stdlib only.
* Without namespaces (no ``unshare``, or unprivileged user namespaces disabled): there is no
  network isolation, no hiding of readable files, the program can write to world-writable
  directories (/tmp: disk use is then bounded only by file size × time), a process that escaped
  its group is found and killed only when running as root (by uid), and as a normal user the
  fork limit counts all of that user's processes. :func:`isolation` reports what this machine
  provides; a warning is logged when a Sandbox first probes it.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import inspect
import logging
import math
import marshal
import os
import pwd
import queue
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_UID_BASE = 61000
# The plain data that may cross from the candidate to the tests, by exact type.
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
# Imported by the launcher before it drops privileges when the stdlib is not readable by the
# sandbox uid (e.g. a pyenv Python under /root, without a mount namespace to bind it back in).
_PREIMPORT = (
    "math re collections itertools functools heapq bisect string typing random statistics "
    "fractions decimal datetime operator copy hashlib json array textwrap numbers enum "
    "dataclasses io threading time"
).split()


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (not: the program failed)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. Every process of the run gets the rlimits."""

    timeout_s: float = 5.0  # wall clock, from spawn to the last test
    memory_mb: int = 1024  # address space per process
    cpu_s: int | None = None  # CPU seconds per process; None: ceil(timeout_s) + 1
    nproc: int = 8  # processes + threads of the run (per sandbox uid / user namespace)
    file_size_mb: int = 16  # largest file a program may write
    disk_mb: int = 64  # the working directory's tmpfs (namespace mode)
    scratch_mb: int = 8  # each of /tmp, /var/tmp, /dev/shm, /run (namespace mode)
    open_files: int = 64
    output_bytes: int = 1 << 20  # per stream (stdout, stderr); more kills the run
    nice: int = 10

    def rlimits(self) -> dict[str, tuple[int, int]]:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1
        mib = 1 << 20
        wanted = {
            "RLIMIT_AS": (self.memory_mb * mib, self.memory_mb * mib),
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_NPROC": (self.nproc, self.nproc),
            "RLIMIT_FSIZE": (self.file_size_mb * mib, self.file_size_mb * mib),
            "RLIMIT_NOFILE": (self.open_files, self.open_files),
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_MSGQUEUE": (0, 0),
        }
        return {k: v for k, v in wanted.items() if hasattr(resource, k)}


@dataclass
class SandboxResult:
    """What one run did. `tests` holds one bool per counted test (tests mode)."""

    status: str  # "ok" | "timeout" | "output_limit" | "error"
    returncode: int | None
    wall_s: float
    stdout: str = ""
    stderr: str = ""
    tests: list[bool] | None = None
    finished: bool = False  # the test process reported that every test ran
    load_error: bool = False  # the program failed (raised, exited) before any test ran

    @property
    def passed(self) -> int:
        return sum(self.tests or [])

    @property
    def total(self) -> int:
        return len(self.tests or [])

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class TestCase:
    """One step of a test script. Counted steps are the tests; an uncounted step that fails
    (setup inside a HumanEval ``check``) fails every counted step after it."""

    __test__ = False  # not a pytest class

    source: str
    counted: bool = True


@dataclass
class Isolation:
    """What this machine gives the sandbox (see :func:`isolation`)."""

    python: str
    namespaces: bool  # network + pid + mount namespaces
    user_namespace: bool  # unprivileged path: namespaces inside a user namespace
    uids: tuple[int, ...]  # per-slot uids (root), else ()
    hide: tuple[str, ...]
    keep: tuple[str, ...]
    preimport: tuple[str, ...]
    prefix: tuple[str, ...]  # command prefix (setpriv, unshare)
    missing: tuple[str, ...] = ()  # protections this machine lacks

    def describe(self) -> str:
        parts = [
            "namespaces: net+pid+mount" + (" (in a user namespace)" if self.user_namespace else "")
            if self.namespaces
            else "namespaces: none",
            f"uids: {self.uids[0]}..{self.uids[-1]}" if self.uids else "uid: unchanged",
        ]
        if self.missing:
            parts.append("missing: " + "; ".join(self.missing))
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------
# The child side. These functions are sent, as source, to `python -I -S -c` (see
# _child_source): they run in a fresh interpreter and may only use the names imported in
# _CHILD_HEADER and each other. The launcher (_c_main) runs as root (or namespace root) until
# _c_confine drops that.

_CHILD_HEADER = "import builtins, marshal, os, resource, signal, sys\n"


def _c_read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _c_write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _c_send(fd, obj):
    data = marshal.dumps(obj)
    _c_write_all(fd, len(data).to_bytes(4, "little") + data)


def _c_recv(fd, limit=64 << 20):
    """One framed message; EOFError when the other side is gone."""

    def exact(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("peer closed")
            buf += chunk
        return bytes(buf)

    size = int.from_bytes(exact(4), "little")
    if size > limit:
        raise ValueError("message too large")
    return marshal.loads(exact(size))


def _c_plain(value, max_items=10_000_000):
    """True if `value` is plain data, by exact type, all the way down (iteratively)."""
    plain = (type(None), bool, int, float, complex, str, bytes)
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > max_items:
            return False
        t = type(v)
        if t in plain:
            continue
        if t is list or t is tuple or t is set or t is frozenset:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            return False
    return True


def _c_libc():
    import ctypes

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


def _c_mounts(cfg, mount, umount):
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


def _c_confine(cfg):
    """Everything privileged, then drop it: after this the process is the sandboxed user."""
    mount, umount, prctl = _c_libc()
    for name in cfg["preimport"]:
        try:
            __import__(name)
        except Exception:
            pass
    if cfg["mounts"]:
        _c_mounts(cfg, mount, umount)
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


def _c_alarm(seconds, child=None):
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


def _c_reaper(prctl):
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


def _c_finish(cfg, child, code):
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


def _c_exec_program(source, name):
    """Run a program as a module called `name`; returns its namespace. May raise anything."""
    ns = {"__name__": name, "__builtins__": builtins}
    exec(compile(source, "<program>", "exec"), ns)
    return ns


def _c_flush():
    """Push the candidate's prints out before it can be killed (they help debugging)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _c_serve(job, rfd, wfd):
    """The candidate process: load the program, then answer calls with plain data."""
    try:
        ns = _c_exec_program(job["program"], "__candidate__")
    except BaseException as exc:  # SystemExit included: exiting early is a failure
        try:
            sys.excepthook(type(exc), exc, exc.__traceback__)
            sys.stdout.flush()
            _c_send(wfd, ("error", type(exc).__name__))
        except BaseException:
            pass
        os._exit(1)
    names = [k for k, v in ns.items() if callable(v) and not k.startswith("__")]
    _c_flush()
    _c_send(wfd, ("ready", names))
    while True:
        try:
            msg = _c_recv(rfd)
        except BaseException:
            try:
                sys.stdout.flush()
            except BaseException:
                pass
            os._exit(0)
        name, args, kwargs = msg[1], msg[2], msg[3]
        try:
            value = ns[name](*args, **kwargs)
            if _c_plain(value):
                reply = ("ok", value)
            else:
                reply = ("exc", "TypeError", "returned a non-plain value")
        except BaseException as exc:
            try:
                text = str(exc)[:300]
            except BaseException:
                text = ""
            reply = ("exc", str(type(exc).__name__)[:100], text if type(text) is str else "")
        _c_flush()
        try:
            _c_send(wfd, reply)
        except ValueError:  # unmarshallable after all
            _c_send(wfd, ("exc", "TypeError", "returned a non-plain value"))


def _c_stub(name, rfd, wfd):
    """Test-side stand-in for the candidate's function `name`."""

    def stub(*args, **kwargs):
        _c_send(wfd, ("call", name, args, kwargs))
        reply = _c_recv(rfd)
        if type(reply) is not tuple or not reply:
            raise RuntimeError("bad reply from the candidate")
        if reply[0] == "ok" and len(reply) == 2 and _c_plain(reply[1]):
            return reply[1]
        if reply[0] == "exc" and len(reply) == 3 and type(reply[1]) is str:
            etype = getattr(builtins, reply[1], None)
            if not (isinstance(etype, type) and issubclass(etype, Exception)):
                etype = RuntimeError
            try:
                exc = etype(reply[2] if type(reply[2]) is str else "")
            except Exception:
                exc = RuntimeError(reply[1])
            raise exc
        raise RuntimeError("bad reply from the candidate")

    stub.__name__ = stub.__qualname__ = name
    return stub


def _c_run_tests(cfg, job, prctl):
    """Fork the candidate, then run the tests here, reporting each with the nonce."""
    to_cand_r, to_cand_w = os.pipe()
    to_test_r, to_test_w = os.pipe()
    child = [os.fork()]
    if child[0] == 0:  # the candidate process: no tests, no nonce, no result pipe
        os.close(cfg["test_fd"])
        os.close(cfg["result_fd"])
        os.close(to_cand_w)
        os.close(to_test_r)
        try:
            prctl(1, 9)
        except OSError:
            pass
        _c_serve(job, to_cand_r, to_test_w)
        os._exit(0)
    os.close(to_cand_r)
    os.close(to_test_w)
    _c_alarm(cfg["alarm"], child)
    _c_reaper(prctl)
    try:
        _c_test(cfg, to_test_r, to_cand_w)
    finally:  # also when the trainer stopped listening (EPIPE): reap before leaving
        _c_finish(cfg, child[0], 0)


def _c_test(cfg, to_test_r, to_cand_w):
    """The test process proper: stubs for the candidate's functions, setup, steps, report."""
    tests = marshal.loads(_c_read_all(cfg["test_fd"]))
    nonce, rfd = tests["nonce"], cfg["result_fd"]

    def report(line):
        _c_write_all(rfd, ("%s %s\n" % (nonce, line)).encode())

    try:
        hello = _c_recv(to_test_r)
        ok = type(hello) is tuple and len(hello) == 2 and hello[0] == "ready" and type(hello[1]) is list
    except BaseException:
        ok = False
    if not ok:
        report("load-error")
    else:
        available = {n for n in hello[1] if type(n) is str}
        ns = {"__name__": "__test__", "__builtins__": builtins}
        for name in tests["names"]:
            if name in available:
                ns[name] = _c_stub(name, to_test_r, to_cand_w)
        if tests["entry_point"]:
            ns["candidate"] = _c_stub(tests["entry_point"], to_test_r, to_cand_w)
        broken = False
        try:
            exec(compile(tests["setup"], "<test setup>", "exec"), ns)
        except BaseException:
            broken = True
        for i, (source, counted) in enumerate(tests["cases"]):
            passed = False
            if not broken:
                try:
                    exec(compile(source, "<test %d>" % i, "exec"), ns)
                    passed = True
                except BaseException:
                    broken = not counted
            if counted:
                report("%d %d" % (i, int(passed)))
        report("done")


def _c_run_stdio(cfg, job, prctl):
    """Run the program as __main__ in a child whose stdin is the case input; mirror its status."""
    memfd = os.memfd_create("stdin")
    _c_write_all(memfd, job["stdin"])
    os.lseek(memfd, 0, 0)
    child = [os.fork()]
    if child[0] == 0:
        os.dup2(memfd, 0)
        os.close(memfd)
        try:
            prctl(1, 9)
        except OSError:
            pass
        code = 0
        try:
            sys.argv = ["main.py"]
            _c_exec_program(job["program"], "__main__")
        except SystemExit as exc:
            code = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
        except BaseException:
            try:
                sys.excepthook(*sys.exc_info())
            except BaseException:
                pass
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF)
    os.close(memfd)
    _c_alarm(cfg["alarm"], child)
    statuses = _c_reaper(prctl)
    while child[0] not in statuses:
        try:
            pid, status = os.waitpid(child[0], 0)
            statuses[pid] = status
        except ChildProcessError:
            if child[0] not in statuses:
                statuses[child[0]] = 1 << 8
    status = statuses[child[0]]
    _c_finish(cfg, child[0], os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _c_main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    job = marshal.loads(_c_read_all(cfg["job_fd"]))
    prctl = _c_confine(cfg)
    if cfg["mode"] == "tests":
        _c_run_tests(cfg, job, prctl)
    else:
        _c_run_stdio(cfg, job, prctl)


_CHILD_FUNCS = (
    _c_read_all, _c_write_all, _c_send, _c_recv, _c_plain, _c_libc, _c_mounts, _c_confine,
    _c_alarm, _c_reaper, _c_finish, _c_exec_program, _c_flush, _c_serve, _c_stub, _c_run_tests, _c_test,
    _c_run_stdio, _c_main,
)
_child_src: str | None = None


_child_code: str | None = None


def _child_source() -> str:
    global _child_src
    if _child_src is None:
        body = "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in _CHILD_FUNCS)
        _child_src = _CHILD_HEADER + "\n" + body + "\n\n_c_main()\n"
    return _child_src


def _child_argv(python: str) -> list[str]:
    """`-c` + the launcher: precompiled (marshal, in hex) when the sandbox runs this very
    interpreter, saving the child a compile per run; else its source."""
    global _child_code
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return ["-c", _child_source()]
    if _child_code is None:
        _child_code = marshal.dumps(compile(_child_source(), "<sandbox launcher>", "exec")).hex()
    return ["-c", "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))", _child_code]


# ----------------------------------------------------------------------------------------
# The trainer side.

# World-writable places (and /run, for its sockets), each replaced by a private, size-capped
# tmpfs in namespace mode.
_SCRATCH = ("/dev/shm", "/run", "/tmp", "/var/tmp")
# Never hidden, nor anything that contains them (a trainer started from / or /usr).
_SYSTEM_DIRS = ("/bin", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")
_SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


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
    import fcntl

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


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int) -> int:
    """SIGKILL every process of the sandbox uid (only used without a pid namespace)."""
    killed = 0
    for _ in range(10):
        pids = _pids_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.01)
    return killed


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def _default_hide() -> list[str]:
    hide = ["/root", "/home", str(Path.home()), str(PROJECT_ROOT), os.getcwd()]
    for var in ("HF_HOME", "XDG_CACHE_HOME", "EGGROLL_RL_CACHE"):
        if os.environ.get(var):
            hide.append(os.environ[var])
    hide += [p for p in os.environ.get("EGGROLL_SANDBOX_HIDE", "").split(":") if p]
    return hide


def _probe_namespaces(prefix: list[str]) -> bool:
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def referenced_names(sources: Sequence[str]) -> list[str]:
    """Names the test code reads that could be the candidate's functions (not builtins)."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names.update(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
    return sorted(names - set(dir(builtins)) - {"candidate"})


class Sandbox:
    """A bounded pool of sandboxed runs. Thread-safe; one per process is enough."""

    def __init__(
        self,
        limits: Limits | None = None,
        workers: int | None = None,
        namespaces: bool | None = None,
        drop_privileges: bool = True,
        hide: Sequence[str] = (),
        uid_base: int | None = None,
    ):
        self.limits = limits or Limits()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._want_ns = namespaces
        self._drop = drop_privileges
        self._extra_hide = [str(h) for h in hide]
        self._uid_base = uid_base
        self._iso: Isolation | None = None
        self._lock = threading.Lock()
        self._slots: queue.Queue[int | None] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._uid_locks: list[int] = []

    # -- setup ---------------------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        with self._lock:
            if self._iso is None:
                self._iso = self._probe()
                slots = self._iso.uids or (None,) * self.workers
                for slot in slots:
                    self._slots.put(slot)
        return self._iso

    def _probe(self) -> Isolation:
        root = os.geteuid() == 0
        missing = []
        python = os.environ.get("EGGROLL_SANDBOX_PYTHON") or os.path.realpath(sys.executable)
        prefix: list[str] = []
        setpriv = shutil.which("setpriv")
        if setpriv:
            prefix = [setpriv, "--pdeathsig", "KILL", "--"]
        ns = user_ns = False
        unshare = shutil.which("unshare")
        if self._want_ns is not False and unshare:
            flags = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--"]
            if not root:
                flags = ["--user", "--map-root-user", *flags]
            if _probe_namespaces([unshare, *flags]):
                prefix = [*prefix, unshare, *flags]
                ns, user_ns = True, not root
        if not ns:
            if self._want_ns:
                raise SandboxError("namespaces requested but `unshare --net --pid --mount` does not work here")
            missing.append("no network/pid/mount namespaces (unshare unavailable or not permitted)")
        uids: tuple[int, ...] = ()
        if root and self._drop:
            base = self._uid_base or int(os.environ.get("EGGROLL_SANDBOX_UID_BASE", DEFAULT_UID_BASE))
            found, uid = [], base
            while len(found) < self.workers and uid < base + 10_000:
                if not _uid_in_use(uid):
                    lock = _claim_uid(uid)
                    if lock is not None:
                        found.append(uid)
                        self._uid_locks.append(lock)
                uid += 1
            if len(found) < self.workers:
                raise SandboxError(f"no free sandbox uids from {base} (EGGROLL_SANDBOX_UID_BASE)")
            uids = tuple(found)
        elif not root and not user_ns:
            missing.append("programs run as the trainer's user (no namespaces, not root)")
        elif root:
            missing.append("privileges not dropped (drop_privileges=False)")
        stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
        base_prefix = os.path.realpath(sys.base_prefix)
        hide: list[str] = []
        for h in [*_default_hide(), *self._extra_hide]:
            h = os.path.realpath(h)
            if h in hide or any(_is_within(s, h) for s in _SYSTEM_DIRS):
                continue
            if not any(_is_within(h, s) for s in _SCRATCH):  # scratch dirs are replaced anyway
                hide.append(h)
        # The Python installation, bound back in when a hidden or scratch dir holds it.
        covered = [*hide, *_SCRATCH]
        keep = sorted(p for p in {base_prefix, stdlib} if any(_is_within(p, h) for h in covered))
        keep = [k for k in keep if not any(_is_within(k, o) and k != o for o in keep)]
        preimport: tuple[str, ...] = ()
        if uids and not ns and not _others_can_read(stdlib):
            preimport = tuple(_PREIMPORT)
            missing.append(f"stdlib {stdlib} unreadable by the sandbox uid: common modules preimported")
        iso = Isolation(
            python=python, namespaces=ns, user_namespace=user_ns, uids=uids,
            hide=tuple(hide) if ns else (), keep=tuple(keep) if ns else (), preimport=preimport,
            prefix=tuple(prefix), missing=tuple(missing),
        )
        if missing:
            log.warning("sandbox is weaker on this machine: %s", "; ".join(missing))
        return iso

    def _config(self, mode: str, limits: Limits, workdir: str, uid: int | None, fds: dict[str, int]) -> str:
        iso = self._iso
        assert iso is not None
        cfg = {
            "mode": mode,
            "uid": uid,
            "mounts": iso.namespaces,
            "workdir": workdir,
            "scratch": list(_SCRATCH),
            "scratch_mb": limits.scratch_mb,
            "disk_mb": limits.disk_mb,
            "hide": list(iso.hide),
            "keep": list(iso.keep),
            "preimport": list(iso.preimport),
            "rlimits": limits.rlimits(),
            "nice": limits.nice,
            "alarm": int(math.ceil(limits.timeout_s)) + 1,
            "kill_all": iso.namespaces or uid is not None,
            **fds,
        }
        return marshal.dumps(cfg).hex()

    # -- one run -------------------------------------------------------------------------

    def run_program(self, program: str, stdin: str | bytes = "", limits: Limits | None = None) -> SandboxResult:
        """Run `program` as __main__ with `stdin`; the result carries its (capped) output."""
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        return self._run("stdio", {"program": program, "stdin": data}, None, limits or self.limits)

    def run_tests(
        self,
        program: str,
        tests: Sequence[str | TestCase],
        setup: str = "",
        entry_point: str | None = None,
        limits: Limits | None = None,
    ) -> SandboxResult:
        """Load `program` in the candidate process, then run `setup` and each test in the test
        process. Test code calls the candidate's functions by name, and `candidate` is the
        function `entry_point`. `result.tests` has one bool per counted test."""
        cases = [t if isinstance(t, TestCase) else TestCase(t) for t in tests]
        spec = {
            "nonce": secrets.token_hex(16),
            "setup": setup,
            "cases": [(c.source, c.counted) for c in cases],
            "names": referenced_names([setup, *(c.source for c in cases)]),
            "entry_point": entry_point or "",
        }
        return self._run("tests", {"program": program}, spec, limits or self.limits)

    def _run(self, mode: str, job: dict, spec: dict | None, limits: Limits) -> SandboxResult:
        iso = self.isolation
        uid = self._slots.get()
        try:
            return self._run_in_slot(iso, mode, job, spec, limits, uid)
        finally:
            self._slots.put(uid)

    def _run_in_slot(self, iso, mode, job, spec, limits, uid) -> SandboxResult:
        start = time.monotonic()
        if iso.namespaces:  # inside the run's own /tmp tmpfs: nothing on the host's disk
            workdir = f"/tmp/eggroll-sbx-{secrets.token_hex(8)}"
        else:
            workdir = tempfile.mkdtemp(prefix="eggroll-sbx-")
        to_close: list[int] = []
        proc = None
        try:
            if uid is not None and not iso.namespaces:
                os.chown(workdir, uid, uid)
            job_fd = os.memfd_create("job", 0)
            to_close.append(job_fd)
            os.write(job_fd, marshal.dumps(job))
            os.lseek(job_fd, 0, os.SEEK_SET)
            fds = {"job_fd": job_fd, "test_fd": -1, "result_fd": -1}
            result_r = None
            if spec is not None:
                test_fd = os.memfd_create("tests", 0)
                to_close.append(test_fd)
                os.write(test_fd, marshal.dumps(spec))
                os.lseek(test_fd, 0, os.SEEK_SET)
                result_r, result_w = os.pipe()
                to_close.append(result_w)
                fds.update(test_fd=test_fd, result_fd=result_w)
            cmd = [*iso.prefix, iso.python, "-I", "-S", "-B", *_child_argv(iso.python),
                   self._config(mode, limits, workdir, uid, fds)]
            env = {**_SAFE_ENV, "HOME": workdir, "TMPDIR": workdir}
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=[fd for fd in fds.values() if fd >= 0], env=env, cwd="/",
                    start_new_session=True,
                )
            except OSError as exc:
                if result_r is not None:
                    os.close(result_r)
                return SandboxResult("error", None, time.monotonic() - start, stderr=f"spawn failed: {exc}")
            for fd in to_close:
                os.close(fd)
            to_close = []
            out = _collect(proc, result_r, start + limits.timeout_s, limits.output_bytes)
        finally:
            for fd in to_close:
                os.close(fd)
            if proc is not None:
                _stop(proc, iso.namespaces, uid)
            if not iso.namespaces:
                _rmtree(workdir)
        status, stdout, stderr, results = out
        res = SandboxResult(
            status, proc.returncode, time.monotonic() - start,
            stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
        )
        if spec is not None:
            res.tests, res.finished, res.load_error = _parse_report(results, spec)
        return res

    # -- many runs -----------------------------------------------------------------------

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        """``[fn(*job) for job in jobs]`` on the bounded pool, in order."""
        if not jobs:
            return []
        _ = self.isolation  # probe once, before the threads race for it
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(lambda job: fn(*job), jobs))

    def close(self) -> None:
        """Wait for running jobs, stop the pool and give the uids back (a later use re-probes)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for fd in self._uid_locks:
                os.close(fd)
            self._uid_locks = []
            self._iso = None
            self._slots = queue.Queue()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen, namespaces: bool, uid: int | None) -> None:
    """Kill what is left of a run and reap it, leaving no process of the slot's uid behind.

    Processes must be reaped by someone we wait for: a process orphaned to the machine's init
    can stay a zombie for seconds, counting against the next run's nproc. So kill from the
    leaves: with namespaces the namespace's init (unshare reaps it, and the kernel empties the
    namespace before that), without them every process but the launcher (their subreaper)."""
    running = proc.poll() is None
    if running:
        if namespaces:
            for pid in _children(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        elif uid is not None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                others = [p for p in _pids_of_uid(uid) if p != proc.pid]
                if not others:
                    break
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.005)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is unreaped, so its pgid is still ours
    except OSError:
        pass
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if uid is not None and not namespaces:
        _kill_uid(uid)
    if uid is not None and (running or not namespaces):  # else the namespace was emptied
        deadline = time.monotonic() + 2.0
        while _pids_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.005)


def _collect(proc: subprocess.Popen, result_r: int | None, deadline: float, cap: int):
    """Drain stdout, stderr and the report pipe until EOF, the deadline or the output cap."""
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {}
    for fd in [proc.stdout.fileno(), proc.stderr.fileno(), result_r]:
        if fd is not None:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
            bufs[fd] = bytearray()
    status = "ok"
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                status = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # the leader is gone; stragglers holding our pipes are killed next
            for key, _ in sel.select(min(deadline - now, 0.1)):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                limit = 1 << 20 if key.fd == result_r else cap
                room = limit - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    status = "output_limit"
                    break
            if status == "output_limit":
                break
    finally:
        sel.close()
        if result_r is not None:
            os.close(result_r)
    out, err = bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()]
    return status, bytes(out), bytes(err), bytes(bufs.get(result_r, b""))


def _parse_report(data: bytes, spec: dict) -> tuple[list[bool], bool, bool]:
    """Per counted test pass/fail from the report lines that carry this run's nonce."""
    nonce = spec["nonce"]
    counted = [i for i, (_, c) in enumerate(spec["cases"]) if c]
    passed: dict[int, bool] = {}
    finished = load_error = False
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != nonce:
            continue
        if parts[1] == "done":
            finished = True
        elif parts[1] == "load-error":
            load_error = True
        elif len(parts) == 3 and parts[1].isdigit() and parts[2] in ("0", "1"):
            passed.setdefault(int(parts[1]), parts[2] == "1")
    return [passed.get(i, False) for i in counted], finished, load_error


# ----------------------------------------------------------------------------------------
# The process-wide default

_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The shared pool (min(4, cpus) workers), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def isolation() -> Isolation:
    """What the default sandbox gets on this machine (probes once)."""
    return default_sandbox().isolation


def run_program(program: str, stdin: str | bytes = "", limits: Limits | None = None) -> SandboxResult:
    return default_sandbox().run_program(program, stdin, limits)


def run_tests(program: str, tests: Sequence[str | TestCase], setup: str = "",
              entry_point: str | None = None, limits: Limits | None = None) -> SandboxResult:
    return default_sandbox().run_tests(program, tests, setup, entry_point, limits)


__all__ = [
    "Isolation", "Limits", "PLAIN_TYPES", "Sandbox", "SandboxError", "SandboxResult", "TestCase",
    "default_sandbox", "isolation", "referenced_names", "run_program", "run_tests",
]
