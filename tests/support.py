"""Helpers shared by tests (imported as `from support import ...`; fixtures stay in conftest.py)."""

from __future__ import annotations

import os

# The device the backend, noise, ES and trainer tests run on: CPU by default (CI), e.g.
# EGGROLL_TEST_DEVICE=cuda on a GPU machine (bench/gpu_check.py sets it).
TEST_DEVICE = os.environ.get("EGGROLL_TEST_DEVICE", "cpu")
