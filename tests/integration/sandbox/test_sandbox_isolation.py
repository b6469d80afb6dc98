"""What a sandboxed program can reach: per-slot uids, no network, no files or secrets outside the
sandbox, a scrubbed environment, nothing written outside it, no signal to the trainer or its
neighbours, and the same containment for an unprivileged trainer (user namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from eggroll_rl.sandbox import Sandbox
from eggroll_rl.sandbox.probe import SCRATCH

from support.sandbox import GOOD, PACKAGE, PROJECT, TESTS, contained, needs_ns
from support.sandbox import IS_ROOT as ROOT


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
