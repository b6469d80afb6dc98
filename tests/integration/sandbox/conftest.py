"""Fixtures of the sandbox tests: a box per isolation mode (module-scoped), a canary file no sandbox
may change and a bystander process no sandbox may kill. Helpers are in support/sandbox.py."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from eggroll_rl.sandbox import Sandbox

from support.sandbox import LIMITS, NS


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
