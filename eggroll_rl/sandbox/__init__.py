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

Where things are
----------------
``api`` (limits, results, :class:`CodeExecutor`), ``probe`` (what this machine can do),
``pool`` (:class:`Sandbox`, the default pool), ``launcher`` (one run, parent side), and the
program that runs in the child: ``child`` with ``child_confine`` and ``child_wire``.
"""

from __future__ import annotations

from .api import CodeExecutor, Isolation, Limits, SandboxError, SandboxResult, TestCase
from .child_wire import PLAIN_TYPES
from .pool import Sandbox, default_sandbox, isolation, referenced_names, run_program, run_tests
from .probe import DEFAULT_UID_BASE, PROJECT_ROOT

__all__ = [
    "DEFAULT_UID_BASE", "PLAIN_TYPES", "PROJECT_ROOT", "CodeExecutor", "Isolation", "Limits", "Sandbox",
    "SandboxError", "SandboxResult", "TestCase", "default_sandbox", "isolation", "referenced_names",
    "run_program", "run_tests",
]
