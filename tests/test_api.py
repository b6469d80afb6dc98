"""The Python API: train, evaluate and export from a script, as the CLI does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


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
