"""`eggroll-rl eval`: table, JSONL of completions, pass@k / maj@k, --compare (CliRunner, tiny model)."""

import json

from typer.testing import CliRunner

from eggroll_rl.cli import app

from support import DATA, TINY

runner = CliRunner()


def test_eval_writes_table_and_jsonl(tmp_path):
    out = tmp_path / "eval.jsonl"
    result = runner.invoke(app, ["eval", "tiny-random", TINY, DATA, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "accuracy [95% CI]" in result.output and "tiny-random" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4  # data.eval_size of the tiny recipe, greedy: one sample each
    assert {"question", "answer", "completion", "correct", "reward", "math_accuracy", "digit_fraction"} <= lines[0].keys()
    assert all(row["model"] == "tiny-random" for row in lines)


def test_eval_with_samples_reports_pass_and_maj_at_k(tmp_path):
    out = tmp_path / "eval.jsonl"
    result = runner.invoke(app, ["eval", "tiny-random", TINY, DATA, "-k", "3", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "pass@3" in result.output and "maj@3" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12 and {row["sample"] for row in lines} == {0, 1, 2}


def test_compare_puts_two_models_side_by_side(tmp_path):
    trained = tmp_path / "run"
    assert runner.invoke(app, ["train", TINY, DATA, f"output_dir={tmp_path}", "run_name=run"]).exit_code == 0
    out = tmp_path / "cmp.jsonl"
    result = runner.invoke(app, ["eval", str(trained), "--compare", "tiny-random", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "difference" in result.output and "tiny-random" in result.output
    models = {json.loads(line)["model"] for line in out.read_text().splitlines()}
    assert models == {str(trained), "tiny-random"}


def test_eval_needs_a_recipe_for_a_plain_model(tmp_path):
    result = runner.invoke(app, ["eval", "tiny-random"])
    assert result.exit_code == 2
    assert "missing RECIPE" in result.output


def test_eval_rejects_bad_samples():
    result = runner.invoke(app, ["eval", "tiny-random", TINY, "-k", "0"])
    assert result.exit_code == 2 and "--samples" in result.output
