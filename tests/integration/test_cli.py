"""The CLI as a user meets it: shipped recipes to show and copy, and a quiet console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eggroll_rl.cli import app
from eggroll_rl.config import from_dict, load_config, to_dict

from support import ROOT

runner = CliRunner()


def test_recipes_show_prints_every_setting_resolved():
    result = runner.invoke(app, ["recipes", "show", "quickstart", "es.lr=0.25"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["es"]["lr"] == 0.25 and "adam_betas" in shown["es"]  # a default the recipe never names
    assert from_dict(shown) == load_config(ROOT / "recipes" / "quickstart.yaml", ["es.lr=0.25"])


def test_recipes_cp_copies_the_recipe_and_its_data(tmp_path):
    dest = tmp_path / "mine" / "smoke.yaml"
    assert runner.invoke(app, ["recipes", "cp", "tiny", str(dest)]).exit_code == 0
    assert (dest.parent / "data" / "gsm8k_mini.jsonl").is_file()
    assert "# A random model never solves math" in dest.read_text()  # comments kept
    assert to_dict(load_config(dest))["data"]["path"] == str((dest.parent / "data" / "gsm8k_mini.jsonl").resolve())
    again = runner.invoke(app, ["recipes", "cp", "tiny", str(dest)])
    assert again.exit_code == 2 and "--force" in again.output
    missing = runner.invoke(app, ["recipes", "cp", "nope", str(tmp_path / "x.yaml")])
    assert missing.exit_code == 2 and "shipped ones are: gsm8k, humaneval, quickstart, tiny" in missing.output


@pytest.mark.vllm
@pytest.mark.slow
def test_a_vllm_run_keeps_engine_chatter_off_the_console(tmp_path):
    pytest.importorskip("vllm")
    cli = Path(sys.executable).parent / "eggroll-rl"
    out = subprocess.run([str(cli), "train", "tiny", "backend=vllm", "train.steps=1", f"output_dir={tmp_path}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    console = out.stdout + out.stderr
    for chatter in ("WARNING", "Attempted to load weight", "Triton", "INFO"):
        assert chatter not in console, [line for line in console.splitlines() if chatter in line][:3]
    assert "done: final checkpoint" in console
    assert "WARNING" in (tmp_path / "tiny" / "engine.log").read_text()  # the chatter went here


def test_version_and_the_recipes_list_command():
    from eggroll_rl import __version__

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"eggroll-rl {__version__}"
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0 and "quickstart" in listed.output and "tiny" in listed.output


def test_missing_and_misspelled_recipes_and_runs_name_the_fix(tmp_path):
    bare = runner.invoke(app, ["train"])
    assert bare.exit_code == 2 and "`eggroll-rl train tiny`" in bare.output  # a name that works anywhere
    for command in (["train", "quickstrat"], ["recipes", "show", "quikstart"], ["eval", "smollm2-135m-instruct", "tinyy"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, command
        assert "not found; did you mean" in result.output and "the shipped ones are" in result.output, result.output
    nope = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert nope.exit_code == 2 and f"{tmp_path / 'nope'}: not found" in " ".join(nope.output.split())
    assert "missing RECIPE" not in nope.output


def test_recipes_show_checks_the_model_data_and_rewards_it_names():
    for override, words in (("model=smollm2-135m-instruc", "did you mean 'smollm2-135m-instruct'"),
                            ("data.path=nope.jsonl", "data.path: file 'nope.jsonl' not found"),
                            ("rewards=[math_acuracy]", "did you mean 'math_accuracy'"),
                            ("model=outputs/typo", "model: folder 'outputs/typo' not found")):
        result = runner.invoke(app, ["recipes", "show", "quickstart", override])
        assert result.exit_code == 2 and words in " ".join(result.output.split()), (override, result.output)
