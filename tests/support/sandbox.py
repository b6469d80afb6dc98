"""The sandbox tests' limits, programs and containment check.

Every attack must end within its timeout with the sample scored 0, leave the trainer (this
process), a bystander process and the machine unharmed, change nothing outside the sandbox,
and leave no process and no working directory behind. Most attacks first define a correct
``add``, so a 0 means the attack was contained, not that the program was wrong anyway.

Attacks run twice where it makes sense: with the namespaces this machine gives ("ns") and
without them ("fallback": rlimits + uid switch only), the degraded mode of machines without
``unshare``. The boxes, the canary file and the bystander process are fixtures in
tests/integration/sandbox/conftest.py.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

import pytest

from eggroll_rl import sandbox as sbx
from eggroll_rl.sandbox import Limits, Sandbox, TestCase
from eggroll_rl.sandbox.launcher import pids_of_uid

from support import ROOT

TIMEOUT = 3.0
LIMITS = Limits(timeout_s=TIMEOUT, memory_mb=256, output_bytes=1 << 16)
GOOD = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(2, 5) == 7", "assert abs(add(0.5, 0.25) - 0.75) < 1e-9"]
IS_ROOT = os.geteuid() == 0  # the trainer runs as root: per-slot uids
PROJECT = ROOT
PACKAGE = Path(sbx.__file__).resolve().parent


def _ns_available() -> bool:
    box = Sandbox(limits=LIMITS)
    try:
        return box.isolation.namespaces
    finally:
        box.close()


NS = _ns_available()
needs_ns = pytest.mark.skipif(not NS, reason="no unshare/namespaces on this machine")


def workdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "eggroll-sbx-*")))


def leftover_pids(box: Sandbox) -> list[int]:
    return [pid for uid in box.isolation.uids for pid in pids_of_uid(uid)]


def contained(box: Sandbox, program: str, tests=TESTS, canary: Path | None = None, **kw):
    """Run an attack and check everything every attack must satisfy; returns the result."""
    before_dirs = workdirs()
    before_canary = (canary.read_text(), canary.stat().st_mtime_ns) if canary else None
    start = time.monotonic()
    res = box.run_tests(program, tests, **kw)
    wall = time.monotonic() - start
    assert res.total == sum(1 for t in tests if not isinstance(t, TestCase) or t.counted)
    assert res.passed == 0 and res.pass_fraction == 0.0 and not res.all_passed, res
    assert wall < TIMEOUT + 2.0, f"took {wall:.1f}s"
    assert leftover_pids(box) == [], "a sandboxed process outlived its run"
    assert workdirs() == before_dirs, "a working directory was left behind"
    if canary:
        assert (canary.read_text(), canary.stat().st_mtime_ns) == before_canary
    os.kill(os.getpid(), 0)  # the trainer is alive (we are still running, too)
    return res
