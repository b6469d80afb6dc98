"""Helpers shared by tests, imported as `from support import ...` (tests/ is on sys.path through
`pythonpath` in pyproject.toml); fixtures stay in conftest.py files.

support/__init__.py     paths and settings every layer uses (this file)
support/export.py       a tiny run driven through the CLI and the completions of what it exports
support/hub_standin.py  a local stand-in for the Hugging Face Hub's HTTP API
support/sandbox.py      the limits, programs and containment check of the sandbox tests
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository root
FIXTURES = ROOT / "tests" / "fixtures"  # data files read by the tests
TINY = str(ROOT / "recipes" / "tiny.yaml")
DATA = f"data.path={ROOT / 'recipes' / 'data' / 'gsm8k_mini.jsonl'}"

# The device the backend, noise, ES and trainer tests run on: CPU by default (CI), e.g.
# EGGROLL_TEST_DEVICE=cuda on a GPU machine (bench/gpu_check.py sets it).
TEST_DEVICE = os.environ.get("EGGROLL_TEST_DEVICE", "cpu")
