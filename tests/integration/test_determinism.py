"""Same recipe, same machine: the same completions, run after run (real SmolLM2, vLLM bf16 on CPU).

With vLLM's engine core in a process of its own, a generate call's requests reached it while it
was already stepping, so batches (and bf16 numerics with them) depended on timing: two runs of
this eval differed in 1 to 18 of 200 greedy completions. The CPU backend now keeps the engine core
in the trainer's process (vllm_engine.set_engine_env), and every request is queued before the first step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _eval(out: Path, cwd: Path) -> list[str]:
    cli = Path(sys.executable).parent / "eggroll-rl"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}  # the shipped default
    result = subprocess.run([str(cli), "eval", "smollm2-135m-instruct", "quickstart", "--out", str(out)],
                            cwd=cwd, env={**env, "VLLM_CPU_KVCACHE_SPACE": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line)["completion"] for line in out.read_text().splitlines()]


def test_two_evals_in_fresh_processes_give_identical_completions(tmp_path):
    pytest.importorskip("vllm")
    first = _eval(tmp_path / "a.jsonl", tmp_path)
    second = _eval(tmp_path / "b.jsonl", tmp_path)
    assert len(first) == 200
    assert [i for i, (a, b) in enumerate(zip(first, second)) if a != b] == []
