"""The Python API: train, evaluate and export from a script, as the CLI does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT


def test_importing_the_package_loads_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, eggroll_rl; print('torch' in sys.modules, callable(eggroll_rl.train))"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr


@pytest.mark.slow
def test_train_evaluate_export_from_python(tmp_path):
    from eggroll_rl import evaluate, export, train
    from eggroll_rl.config import ConfigError

    run = train("tiny", "train.steps=2", output_dir=tmp_path, run_name="api")
    assert run == tmp_path / "api" and (run / "checkpoints" / "step_000002").is_dir()
    summary = evaluate(run)  # the run's latest checkpoint on its own recipe
    assert summary["n"] == 4 and 0 <= summary["accuracy"] <= 1
    assert evaluate("tiny-random", str(ROOT / "recipes" / "tiny.yaml"))["n"] == 4
    merged = export(run)
    assert (merged / "model.safetensors").is_file()
    adapter = export(run, as_adapter=True, rank=2)
    assert (adapter / "adapter_config.json").is_file()
    with pytest.raises(ConfigError):
        export(run, as_adapter=True, rank=2, energy=0.9)
    again = train(run, "train.steps=3", resume=True)
    assert (again / "checkpoints" / "step_000003").is_dir()


def length_parity(completions, **kwargs):
    return [float(len(c) % 2) for c in completions]


@pytest.mark.slow
def test_train_takes_reward_callables(tmp_path):
    import yaml

    from eggroll_rl import train
    from eggroll_rl.config import ConfigError

    run = train("tiny", "train.steps=1", "train.eval_every=0", output_dir=tmp_path, run_name="fn",
                reward_funcs=[(length_parity, 0.5)])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["rewards"] == [{"name": "test_api:length_parity", "weight": 0.5}]  # named, so it resumes and evaluates
    metrics = (run / "metrics.jsonl").read_text()
    assert "rewards/test_api:length_parity/mean" in metrics
    with pytest.raises(ConfigError, match="not a module-level function"):
        train("tiny", output_dir=tmp_path, run_name="lambda", reward_funcs=[lambda completions, **k: [0.0] * len(completions)])
