"""The EGGROLL-vs-GRPO benchmark end to end, tiny: both methods train, are scored at the marks
by the same eval path, and the summary, table and plot are written."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from support import ROOT


@pytest.mark.slow
def test_vs_grpo_tiny(tmp_path):
    if importlib.util.find_spec("trl") is None:  # not imported here: TRL sets VLLM_LOGGING_LEVEL for the process
        pytest.skip("needs trl")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_grpo.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--minutes", "0.2", "--marks", "0.1,0.2", "--grpo-lr", "1e-5", "--grpo-steps", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    grpo = "grpo (lr 1e-05, linear decay over 2 steps)"
    assert set(summary["methods"]) == {"eggroll", grpo}
    # GRPO's max_steps ends it before the last mark: the marks after it hold its last weights.
    assert summary["methods"][grpo]["steps"] == 2 and summary["methods"][grpo]["marks"][-1]["step"] == 2
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["engine_dtype"] in ("float32", "bfloat16")
    assert summary["machine"]["native_bf16"] == bool(summary["machine"]["bf16_flags"])
    for method in summary["methods"].values():
        assert [m["minutes"] for m in method["marks"]] == [0, 0.1, 0.2]
        assert method["marks"][-1]["step"] >= 1 and method["peak_rss_gb"] > 0.2 and method["s_per_step"] > 0
        assert all(0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1 for m in method["marks"])
    assert (tmp_path / "vs_grpo.png").read_bytes().startswith(b"\x89PNG")
    assert grpo in out.stdout and "peak GB" in out.stdout and summary["machine"]["cpu"] in out.stdout


def test_a_bad_eggroll_override_stops_before_any_work(tmp_path):
    # Space-joined overrides in one --eggroll: one line naming the key, before the base model is scored.
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_grpo.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--methods", "eggroll", "--eggroll", "train.steps=12 es.lr=0.4", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("vs_grpo.py: train.steps")
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def bench_module(name: str):
    """bench/NAME.py imported as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eggroll_keeps_the_steps_a_decaying_schedule_is_timed_by():
    vs_grpo = bench_module("vs_grpo")
    tiny, quickstart = str(ROOT / "recipes" / "tiny.yaml"), str(ROOT / "recipes" / "quickstart.yaml")
    assert vs_grpo.step_cap(tiny, []) == ["train.steps=100000"]  # constant lr: only the time budget ends the run
    assert vs_grpo.step_cap(tiny, ["train.steps=5"]) == []  # the caller's cap stays
    assert vs_grpo.step_cap(tiny, ["es.sigma_schedule=linear"]) == []
    assert vs_grpo.step_cap(quickstart, []) == []  # its cosine decays over its own train.steps
    assert vs_grpo.step_cap(quickstart, ["es.lr_schedule=constant"]) == ["train.steps=100000"]


def test_memory_vs_size_builds_a_random_model_of_another_shape(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eggroll_rl.tiny_model import build_tiny_model

    bench = bench_module("memory_vs_size")
    base = build_tiny_model(tmp_path / "base")
    monkeypatch.setitem(bench.SHAPES, "wider", (96, 160, 3, 3, 1))
    dest = bench.random_model(base, "wider", tmp_path / "wider")
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.head_dim) == (96, 3, 32)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (32, 96)  # 1 kv head of 32
    assert AutoTokenizer.from_pretrained(dest).chat_template == AutoTokenizer.from_pretrained(base).chat_template
