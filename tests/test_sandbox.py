"""The sandbox against hostile programs.

Every attack must end within its timeout with the sample scored 0, leave the trainer (this
process), a bystander process and the machine unharmed, change nothing outside the sandbox,
and leave no process and no working directory behind. Most attacks first define a correct
``add``, so a 0 means the attack was contained, not that the program was wrong anyway.

Attacks run twice where it makes sense: with the namespaces this machine gives ("ns") and
without them ("fallback": rlimits + uid switch only), the degraded mode of machines without
``unshare``.
"""

from __future__ import annotations

import ast
import glob
import inspect
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from eggroll_rl import sandbox as sbx
from eggroll_rl.sandbox import CodeExecutor, Limits, Sandbox, TestCase, child
from eggroll_rl.sandbox.child_wire import plain
from eggroll_rl.sandbox.launcher import child_source, parse_report, pids_of_uid
from eggroll_rl.sandbox.probe import SCRATCH

TIMEOUT = 3.0
LIMITS = Limits(timeout_s=TIMEOUT, memory_mb=256, output_bytes=1 << 16)
GOOD = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(2, 5) == 7", "assert abs(add(0.5, 0.25) - 0.75) < 1e-9"]
ROOT = os.geteuid() == 0
PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = Path(sbx.__file__).resolve().parent


def _ns_available() -> bool:
    box = Sandbox(limits=LIMITS)
    try:
        return box.isolation.namespaces
    finally:
        box.close()


NS = _ns_available()
needs_ns = pytest.mark.skipif(not NS, reason="no unshare/namespaces on this machine")


@pytest.fixture(scope="module")
def ns_box():
    if not NS:
        pytest.skip("no unshare/namespaces on this machine")
    box = Sandbox(limits=LIMITS, workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def fallback_box():
    box = Sandbox(limits=LIMITS, workers=2, namespaces=False, uid_base=62000)
    yield box
    box.close()


@pytest.fixture(params=["ns", "fallback"])
def box(request):
    return request.getfixturevalue(f"{request.param}_box")


@pytest.fixture(scope="module")
def canary():
    """A root-owned file in a root-owned dir under /tmp that no sandbox may change."""
    d = Path(tempfile.mkdtemp(prefix="eggroll-canary-"))
    d.chmod(0o755)
    f = d / "canary.txt"
    f.write_text("untouched\n")
    f.chmod(0o644)
    yield f
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def bystander():
    """An unrelated process of the trainer's user, in its own session."""
    p = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def _workdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "eggroll-sbx-*")))


def _leftovers(box: Sandbox) -> list[int]:
    return [pid for uid in box.isolation.uids for pid in pids_of_uid(uid)]


def contained(box: Sandbox, program: str, tests=TESTS, canary: Path | None = None, **kw):
    """Run an attack and check everything every attack must satisfy; returns the result."""
    before_dirs = _workdirs()
    before_canary = (canary.read_text(), canary.stat().st_mtime_ns) if canary else None
    start = time.monotonic()
    res = box.run_tests(program, tests, **kw)
    wall = time.monotonic() - start
    assert res.total == sum(1 for t in tests if not isinstance(t, TestCase) or t.counted)
    assert res.passed == 0 and res.pass_fraction == 0.0 and not res.all_passed, res
    assert wall < TIMEOUT + 2.0, f"took {wall:.1f}s"
    assert _leftovers(box) == [], "a sandboxed process outlived its run"
    assert _workdirs() == before_dirs, "a working directory was left behind"
    if canary:
        assert (canary.read_text(), canary.stat().st_mtime_ns) == before_canary
    os.kill(os.getpid(), 0)  # the trainer is alive (we are still running, too)
    return res


# ----------------------------------------------------------------------------------------
# Baseline: the harness does pass correct programs, in both modes


def test_correct_program_passes(box):
    res = box.run_tests(GOOD, TESTS)
    assert res.status == "ok" and res.tests == [True, True, True] and res.finished
    assert res.pass_fraction == 1.0 and res.all_passed


def test_partial_program_gets_partial_credit(box):
    res = box.run_tests("def add(a, b):\n    return int(a + b)\n", TESTS)
    assert res.tests == [True, True, False] and res.pass_fraction == pytest.approx(2 / 3)


def test_stdio_program_reads_stdin(box):
    res = box.run_program("a, b = map(int, input().split())\nprint(a + b)\n", stdin="2 40\n")
    assert res.status == "ok" and res.returncode == 0 and res.stdout == "42\n"


def test_isolation_is_what_this_machine_allows():
    box = Sandbox()
    try:
        iso = box.isolation
        if shutil.which("unshare") and ROOT:
            assert iso.namespaces and iso.uids and not iso.missing
        if ROOT:
            assert iso.uids and all(u >= 1000 for u in iso.uids)
        # The project is hidden, or lies under a scratch folder (/tmp, ...) that the child gets
        # as a private, empty tmpfs: either way the child cannot read it.
        under_scratch = any(PROJECT == Path(s) or Path(s) in PROJECT.parents for s in SCRATCH)
        assert str(PROJECT) in iso.hide or under_scratch or not iso.namespaces
    finally:
        box.close()


@pytest.mark.skipif(not ROOT, reason="per-slot uids need root")
def test_two_sandboxes_never_share_a_uid():
    a, b = Sandbox(workers=2), Sandbox(workers=2)
    try:
        assert len(set(a.isolation.uids) | set(b.isolation.uids)) == 4
        freed = set(a.isolation.uids)
        a.close()
        c = Sandbox(workers=2)
        assert set(c.isolation.uids) == freed  # given back on close
        c.close()
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------------------
# Runaway programs


def test_infinite_loop(box, canary):
    res = contained(box, GOOD + "while True:\n    pass\n", canary=canary)
    assert res.status == "timeout"


def test_infinite_loop_inside_the_tested_function(box):
    res = contained(box, "def add(a, b):\n    while True:\n        pass\n")
    assert res.status == "timeout"


def test_busy_loop_in_threads(box, canary):
    program = GOOD + textwrap.dedent("""
        import threading
        def spin():
            while True:
                pass
        for _ in range(64):
            try:
                threading.Thread(target=spin, daemon=True).start()
            except RuntimeError:
                break
        while True:
            pass
    """)
    res = contained(box, program, canary=canary)
    assert res.status == "timeout" or res.load_error  # fallback may lack `threading` (see _PREIMPORT)


def test_fork_bomb(box, canary, bystander):
    program = GOOD + textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    peak, stop = [0], threading.Event()

    def watch():  # the number of processes the bomb reaches, sampled from outside
        while not stop.is_set():
            peak[0] = max(peak[0], len(_leftovers(box)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        contained(box, program, canary=canary)
    finally:
        stop.set()
        watcher.join()
    if ROOT:
        assert 2 <= peak[0] <= LIMITS.nproc
    assert bystander.poll() is None
    # The slot's uid is not poisoned: every slot runs a correct program right after.
    after = box.map(box.run_tests, [(GOOD, TESTS)] * (2 * box.workers))
    assert all(r.all_passed for r in after)


def test_fork_bomb_that_escapes_its_process_group(box):
    program = GOOD + textwrap.dedent("""
        import os, time
        for _ in range(4):
            try:
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        while True:
                            time.sleep(1)
                    os._exit(0)
            except OSError:
                pass
        while True:
            pass
    """)
    contained(box, program)  # asserts that no process of the sandbox uid survived


@pytest.mark.skipif(not ROOT, reason="per-slot uids need root")
def test_concurrent_fork_bombs_do_not_starve_other_slots(box):
    bomb = GOOD + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    results = box.map(box.run_tests, [(bomb, TESTS), (GOOD, TESTS)] * 2)
    assert [r.all_passed for r in results] == [False, True, False, True]


def test_memory_bomb_at_once(box, canary):
    res = contained(box, GOOD + "hog = bytearray(64 * 1024**3)\n", canary=canary)
    assert res.load_error and "MemoryError" in res.stderr


def test_memory_bomb_gradual(box):
    program = GOOD + "hog = []\nwhile True:\n    hog.append(bytearray(10 * 1024**2))\n"
    res = contained(box, program)
    assert res.load_error or res.status == "timeout"


def test_memory_bomb_in_forked_children(box):
    program = GOOD + textwrap.dedent("""
        import os
        for _ in range(16):
            try:
                os.fork()
            except OSError:
                pass
        hog = []
        while True:
            hog.append(bytearray(10 * 1024**2))
    """)
    contained(box, program)


def test_ten_gigabytes_to_stdout(box, canary):
    program = GOOD + "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)\n"
    start = time.monotonic()
    res = contained(box, program, canary=canary)
    assert res.status == "output_limit"
    assert len(res.stdout) <= LIMITS.output_bytes
    assert time.monotonic() - start < 2.0  # killed at the cap, long before 10 GB


def test_flood_to_stderr(box):
    program = GOOD + "import os\nwhile True:\n    os.write(2, b'e' * 65536)\n"
    res = contained(box, program)
    assert res.status == "output_limit" and len(res.stderr) <= LIMITS.output_bytes


def test_stdio_flood_and_loop(box):
    flood = box.run_program("while True:\n    print('y' * 4096)\n")
    assert flood.status == "output_limit" and len(flood.stdout) <= LIMITS.output_bytes
    loop = box.run_program("while True:\n    pass\n")
    assert loop.status == "timeout" and loop.wall_s < TIMEOUT + 2


def test_stopped_program(box):
    program = GOOD + "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"
    res = contained(box, program)
    assert res.status == "timeout"


# ----------------------------------------------------------------------------------------
# Filesystem and network (namespace mode)


@needs_ns
def test_disk_fill(ns_box, canary):
    before = shutil.disk_usage(tempfile.gettempdir()).used
    program = GOOD + textwrap.dedent("""
        import os
        for where in (".", "/tmp", "/var/tmp", "/dev/shm"):
            i = 0
            try:
                while True:
                    with open(os.path.join(where, f"fill{i}"), "wb") as f:
                        f.write(b"x" * (1 << 20))
                    i += 1
            except OSError as exc:
                print(where, i, exc)
        raise SystemExit("disk full")
    """)
    res = contained(ns_box, program, canary=canary)
    assert "No space left on device" in res.stdout
    # Each place held at most its tmpfs size, and none of it reached the host's disk.
    written = {line.split()[0]: int(line.split()[1]) for line in res.stdout.splitlines()}
    assert written["."] <= LIMITS.disk_mb and all(written[p] <= LIMITS.scratch_mb for p in ("/tmp", "/var/tmp"))
    assert shutil.disk_usage(tempfile.gettempdir()).used - before < 32 * 1024**2


def test_one_huge_file(box):
    program = GOOD + "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n"
    res = contained(box, program)
    assert res.load_error and "File too large" in res.stderr  # RLIMIT_FSIZE, before any tmpfs fills


@needs_ns
def test_socket_connection_to_a_local_listener(ns_box):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    # A Unix socket anyone may connect to (like dbus's or an IPC socket of the trainer).
    sock_dir = Path(tempfile.mkdtemp(prefix="eggroll-sock-"))
    sock_dir.chmod(0o777)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(sock_dir / "ipc.sock"))
    (sock_dir / "ipc.sock").chmod(0o777)
    unix.listen(8)
    unix.setblocking(False)
    program = textwrap.dedent(f"""
        import socket
        try:
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect({str(sock_dir / "ipc.sock")!r})
            u.sendall(b"stolen secrets")
        except OSError as exc:
            print("unix:", exc)
        s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
        s.sendall(b"stolen secrets")
        def add(a, b):
            return a + b
    """)
    try:
        res = contained(ns_box, program)
        assert "Network is unreachable" in res.stderr or "refused" in res.stderr
        assert "unix:" in res.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
        with pytest.raises(BlockingIOError):
            unix.accept()
    finally:
        listener.close()
        unix.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


@needs_ns
def test_reading_files_outside_and_exfiltrating_through_stdout(ns_box, monkeypatch):
    secret = "hf_CANARY_" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("WANDB_API_KEY", secret)
    project_line = (PACKAGE / "__init__.py").read_text().splitlines()[0]
    program = textwrap.dedent(f"""
        import json, os
        seen = {{"env": dict(os.environ)}}
        def grab(key, fn):
            try:
                seen[key] = fn()
            except Exception as exc:
                seen[key] = "ERR " + type(exc).__name__
        grab("source", lambda: open({str(PACKAGE / "__init__.py")!r}).read())
        grab("project", lambda: os.listdir({str(PROJECT)!r}))
        grab("home", lambda: os.listdir(os.path.expanduser("~root")))
        grab("ssh", lambda: os.listdir("/root/.ssh"))
        environs = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    environs.append(open(f"/proc/{{pid}}/environ", "rb").read().decode("latin-1"))
                except Exception:
                    pass
        seen["environs"] = environs
        print(json.dumps(seen))
    """)
    res = contained(ns_box, program)
    assert res.stdout.strip(), "the program ran and printed what it could see"
    seen = json.loads(res.stdout)
    assert secret not in res.stdout
    assert project_line not in res.stdout
    assert seen["source"].startswith("ERR")
    assert seen["project"] in ([], "ERR FileNotFoundError", "ERR PermissionError")
    assert seen["ssh"].startswith("ERR")
    assert not [k for k in seen["env"] if k.startswith(("HF_", "WANDB_"))]


def test_environment_is_scrubbed(box, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_canary")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-canary")
    res = box.run_program("import os\nprint(sorted(os.environ))\nprint(list(os.environ.values()))\n")
    assert res.returncode == 0 and "secret_canary" not in res.stdout and "secret-canary" not in res.stdout
    assert "HF_TOKEN" not in res.stdout


@needs_ns
def test_writing_outside_the_sandbox(ns_box):
    # World-writable, so file permissions alone would not stop the sandbox uid.
    open_dir = Path(tempfile.mkdtemp(prefix="eggroll-open-"))
    open_dir.chmod(0o777)
    victim = open_dir / "victim.txt"
    victim.write_text("original\n")
    victim.chmod(0o666)
    targets = [str(victim), str(open_dir / "new.txt"), f"/var/tmp/eggroll-escape-{os.getpid()}",
               f"/dev/shm/eggroll-escape-{os.getpid()}", str(PROJECT / f"eggroll-escape-{os.getpid()}")]
    program = textwrap.dedent(f"""
        import os
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
            except OSError:
                pass
        try:
            os.remove({str(victim)!r})
        except OSError:
            pass
    """)
    try:
        contained(ns_box, program)
        assert victim.read_text() == "original\n"
        assert not any(os.path.exists(t) for t in targets[1:])
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
        for t in targets[2:]:
            if os.path.exists(t):
                os.remove(t)


def test_writing_to_protected_places(box, canary):
    program = textwrap.dedent(f"""
        for path in [{str(canary)!r}, {str(PROJECT / 'README.md')!r}, "/etc/passwd"]:
            try:
                open(path, "a").write("pwned")
            except OSError:
                pass
    """)
    readme = PROJECT / "README.md"
    before = readme.stat().st_mtime_ns if readme.exists() else None
    contained(box, program, canary=canary)
    assert (readme.stat().st_mtime_ns if readme.exists() else None) == before
    assert "pwned" not in Path("/etc/passwd").read_text()


# ----------------------------------------------------------------------------------------
# The trainer and its neighbours


def test_killing_the_parent_and_its_group(box, bystander):
    me, group = os.getpid(), os.getpgrp()
    program = textwrap.dedent(f"""
        import os, signal
        for target in ({me}, {bystander.pid}, os.getppid(), 1, -1):
            for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGALRM):
                try:
                    os.kill(target, sig)
                except OSError:
                    pass
        for pgid in ({group}, {bystander.pid}, 0):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        def add(a, b):
            return a + b
    """)
    contained(box, program)
    assert bystander.poll() is None
    assert os.getpgrp() == group
    assert box.run_tests(GOOD, TESTS).all_passed  # the pool still works


# ----------------------------------------------------------------------------------------
# Cheating the harness


def test_sys_exit_before_tests(box):
    res = contained(box, GOOD + "import sys\nsys.exit(0)\n")
    assert res.load_error and not res.finished


def test_os_exit_before_tests(box):
    res = contained(box, GOOD + "import os\nos._exit(0)\n")
    assert res.load_error


def test_exit_during_the_tests(box):
    contained(box, "def add(a, b):\n    import sys\n    sys.exit(0)\n")
    res = contained(box, "def add(a, b):\n    import os\n    os._exit(0)\n")
    assert not res.load_error


def test_forged_report(box):
    fake = "".join(f"x {i} 1\n" for i in range(3)) + "x done\n"
    program = GOOD + textwrap.dedent(f"""
        import os, sys
        print({fake!r})
        for fd in range(0, 256):
            try:
                os.write(fd, {fake.encode()!r})
            except OSError:
                pass
        os._exit(0)
    """)
    contained(box, program)


def test_reading_the_nonce_from_the_test_process(box):
    program = GOOD + textwrap.dedent("""
        import os
        found = []
        for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd", "/proc/%d/fd" % os.getppid()):
            try:
                found.append(os.listdir(path) if path.endswith("fd") else open(path, "rb").read(64))
            except OSError:
                pass
        print(found)
        os._exit(0)
    """)
    contained(box, program)


def test_eq_override_on_the_result(box):
    program = textwrap.dedent("""
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __lt__(self, other): return True
            def __sub__(self, other): return self
            def __abs__(self): return 0
            def __bool__(self): return True
        def add(a, b):
            return Anything()
    """)
    contained(box, program)


def test_int_and_list_subclasses_with_eq(box):
    contained(box, "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return I(0)\n")
    contained(box, "class L(list):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return [L()]\n",
              tests=["assert add(1, 2) == [[3]]"])


def test_monkey_patching_builtins_and_modules(box):
    program = textwrap.dedent("""
        import builtins, math
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        math.isclose = lambda *a, **k: True
        AssertionError = Exception
        def add(a, b):
            import builtins
            builtins.abs = lambda x: 0
            return 0
    """)
    tests = ["assert abs(add(1, 2) - 3) < 1e-9", "import math\nassert math.isclose(add(1, 1), 2)"]
    contained(box, program, tests=tests)


def test_shadowing_a_builtin_the_tests_use(box):
    program = "def abs(x):\n    return 0\ndef add(a, b):\n    return 0\n"
    contained(box, program, tests=["assert abs(add(1, 2) - 3) < 1e-9"])


def test_redefining_the_check_function(box):
    program = textwrap.dedent("""
        def check(candidate):
            pass
        def assert_equal(*a):
            pass
        def add(a, b):
            return 0
    """)
    setup = "def assert_equal(a, b):\n    assert a == b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
    contained(box, program, tests=["check(candidate)", "assert_equal(add(2, 2), 4)"], setup=setup,
              entry_point="add")


def test_generator_and_non_plain_results_fail(box):
    contained(box, "def add(a, b):\n    yield a + b\n", tests=["assert list(add(1, 2)) == [3]"])
    contained(box, "def add(a, b):\n    return lambda: a + b\n", tests=["assert add(1, 2)() == 3"])


def test_exceptions_cross_as_builtin_types(box):
    program = "def div(a, b):\n    if b == 0:\n        raise ValueError('no')\n    return a // b\n"
    tests = ["try:\n    div(1, 0)\n    assert False\nexcept ValueError:\n    pass", "assert div(7, 2) == 3"]
    res = box.run_tests(program, tests)
    assert res.tests == [True, True]


def test_uncounted_setup_step_failing_fails_the_rest(box):
    steps = [TestCase("x = add(1, 2)", counted=False), TestCase("assert x == 3"), TestCase("assert add(0, 0) == 0")]
    res = box.run_tests("def add(a, b):\n    if a == 1:\n        raise KeyError(a)\n    return a + b\n", steps)
    assert res.tests == [False, False]


# ----------------------------------------------------------------------------------------
# The trainer-side plumbing


def test_report_needs_the_nonce():
    spec = {"nonce": "abc", "cases": [("t0", True), ("s", False), ("t2", True)]}
    tests, finished, load_error = parse_report(b"zzz 0 1\nabc 2 1\nabc 0 0\nabc 0 1\nzzz done\n", spec)
    assert tests == [False, True] and not finished and not load_error
    assert parse_report(b"abc 0 1\nabc 2 1\nabc done\n", spec) == ([True, True], True, False)


def test_plain_data_check():
    assert plain([1, 2.5, "s", b"b", None, True, (1,), {1: {2}}, frozenset({3}), 1j])
    assert not plain(type("S", (str,), {})("x"))
    assert not plain([[object()]])
    assert not plain({"k": (lambda: 0)})


def test_referenced_names_skip_builtins():
    assert sbx.referenced_names(["assert abs(f(x)) == len(g(1))", "candidate(2)", "syntax error("]) == ["f", "g", "x"]


def test_map_keeps_order_and_bounds_the_pool(box):
    progs = [(f"def add(a, b):\n    return a + b + {i}\n", [f"assert add(0, 0) == {i}"]) for i in range(6)]
    results = box.map(box.run_tests, progs)
    assert [r.all_passed for r in results] == [True] * 6
    assert box.workers == 2 and box._pool is not None and box._pool._max_workers == 2


@pytest.mark.slow
@pytest.mark.skipif(not ROOT or not os.path.exists("/usr/bin/setpriv"), reason="needs root to become a normal user")
def test_unprivileged_trainer(tmp_path):
    """As a normal user (no uid switch): user namespaces give the same containment."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"]).returncode:
        pytest.skip("no system python3 >= 3.10 for the unprivileged run")
    work = Path(tempfile.mkdtemp(prefix="eggroll-unpriv-"))
    try:
        work.chmod(0o755)
        copy = work / "sandbox_copy"  # the package alone, as a top-level package
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        for path in [copy, *copy.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        script = textwrap.dedent(f"""
            import json, os, sys
            sys.path.insert(0, {str(work)!r})
            import sandbox_copy as S
            box = S.Sandbox(limits=S.Limits(timeout_s=3, memory_mb=256))
            good = {GOOD!r}
            tests = {TESTS!r}
            bomb = good + (
                "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
            )
            out = {{
                "userns": box.isolation.namespaces,
                "good": box.run_tests(good, tests).all_passed,
                "bomb": box.run_tests(bomb, tests).passed,
                "after": box.run_tests(good, tests).all_passed,
                "exit": box.run_tests(good + "import sys\\nsys.exit(0)\\n", tests).passed,
                "net": box.run_program(
                    "import socket\\nsocket.create_connection(('127.0.0.1', 1), timeout=1)"
                ).stderr[-200:],
                "write": box.run_program("open('/tmp/eggroll-unpriv-x', 'w').write('x')").returncode,
            }}
            print(json.dumps(out))
        """)
        (work / "run.py").write_text(script)
        (work / "run.py").chmod(0o644)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, str(work / "run.py")],
            capture_output=True, text=True, timeout=120, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["good"] and out["after"] and out["bomb"] == 0 and out["exit"] == 0
        if out["userns"]:
            assert "unreachable" in out["net"] or "refused" in out["net"]
            assert not os.path.exists("/tmp/eggroll-unpriv-x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.path.exists("/tmp/eggroll-unpriv-x"):
            os.remove("/tmp/eggroll-unpriv-x")


def test_sandbox_source_is_self_contained():
    """The child program is shipped as one script: child.py after the sibling modules it imports,
    with no import of the package left and no top-level name defined by two of them."""
    assert callable(child.main)  # imported above without running it
    src = child_source()
    compile(src, "<launcher>", "exec")
    for name in ("main", "confine", "serve", "run_tests", "run_stdio", "plain", "send"):
        assert f"\ndef {name}(" in src
    tree = ast.parse(src)
    imported = [
        (node.level if isinstance(node, ast.ImportFrom) else 0, name)
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
    ]
    assert all(level == 0 and name.partition(".")[0] in sys.stdlib_module_names for level, name in imported)
    defined = [
        target.id if isinstance(node, ast.Assign) else node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node])
    ]
    assert len(defined) == len(set(defined))
    assert stat.S_ISREG(os.stat(sbx.__file__).st_mode)
    assert signal.SIGKILL == 9 and sys.platform.startswith("linux")


def test_sandbox_implements_the_executor_protocol():
    for name in ("run_program", "run_tests", "map", "close"):
        assert inspect.signature(getattr(Sandbox, name)) == inspect.signature(getattr(CodeExecutor, name)), name
    assert isinstance(Sandbox.isolation, property) and isinstance(CodeExecutor.isolation, property)
