"""Starting one sandboxed run and ending it: the child program and its config on the command
line, the job on memfds, output and the test report collected under the cap and the deadline,
then the process group (and the slot's uid) stopped and reaped."""

from __future__ import annotations

import ast
import functools
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .api import Isolation, Limits, SandboxResult
from .probe import SCRATCH

_SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@functools.cache
def child_source() -> str:
    """child.py, preceded by the sibling modules it imports (transitively, dependencies first),
    as one script for ``python -c``. The child cannot import eggroll_rl (it is hidden), so the
    ``from .module import ...`` lines are blanked and the modules share one namespace."""
    parts: list[str] = []
    seen: set[str] = set()

    def add(module: str) -> None:
        seen.add(module)
        source = Path(__file__).with_name(f"{module}.py").read_text()
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.module not in seen:
                    add(node.module)
                end = node.end_lineno or node.lineno
                lines[node.lineno - 1 : end] = [""] * (end - node.lineno + 1)
        parts.append("\n".join(lines))

    add("child")
    return "\n\n".join(parts) + "\n"


@functools.cache
def _child_code() -> str:
    return marshal.dumps(compile(child_source(), "<sandbox launcher>", "exec")).hex()


def _child_argv(python: str) -> list[str]:
    """`-c` + the launcher: precompiled (marshal, in hex) when the sandbox runs this very
    interpreter, saving the child a compile per run; else its source."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return ["-c", child_source()]
    return ["-c", "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))", _child_code()]


def _config(iso: Isolation, mode: str, limits: Limits, workdir: str, uid: int | None, fds: dict[str, int]) -> str:
    cfg = {
        "mode": mode,
        "uid": uid,
        "mounts": iso.namespaces,
        "workdir": workdir,
        "scratch": list(SCRATCH),
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


def launch(iso: Isolation, mode: str, job: dict, spec: dict | None, limits: Limits, uid: int | None) -> SandboxResult:
    """One run as `uid` (None: unchanged): "stdio" runs ``job["program"]`` on ``job["stdin"]``;
    "tests" loads it in the candidate process and runs `spec` (nonce, setup, cases) against it."""
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
               _config(iso, mode, limits, workdir, uid, fds)]
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
        res.tests, res.finished, res.load_error = parse_report(results, spec)
    return res


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
            _kill(_children(proc.pid))
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        elif uid is not None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                others = [p for p in pids_of_uid(uid) if p != proc.pid]
                if not others:
                    break
                _kill(others)
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
        while pids_of_uid(uid) and time.monotonic() < deadline:
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


def parse_report(data: bytes, spec: dict) -> tuple[list[bool], bool, bool]:
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


def pids_of_uid(uid: int) -> list[int]:
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


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the sandbox uid (only used without a pid namespace)."""
    for _ in range(10):
        pids = pids_of_uid(uid)
        if not pids:
            break
        _kill(pids)
        time.sleep(0.01)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # already gone
            pass


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
