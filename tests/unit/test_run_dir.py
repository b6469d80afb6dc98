"""The run directory: log step semantics on resume, torn tails, checkpoint discovery."""

from __future__ import annotations

import json

import pytest

from eggroll_rl.config import ConfigError, load_config
from eggroll_rl.run_dir import EVALS, FITNESS, METRICS, SAMPLES, RunDir, RunDirError, read_jsonl


def _write(path, records, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


@pytest.fixture
def run(tmp_path):
    """A run that logged 4 steps: metrics/samples "step" 1..4, fitness 0..3, evals at 0, 2, 4."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    _write(run / METRICS, [{"step": s} for s in (1, 2, 3, 4)])
    _write(run / SAMPLES, [{"step": s, "member": m} for s in (1, 2, 3, 4) for m in (0, 1)])
    _write(run / FITNESS, [{"step": s, "fitness": [0.5, -0.5]} for s in (0, 1, 2, 3)])
    _write(run / EVALS, [{"step": s} for s in (0, 2, 4)])
    return run


def test_truncating_to_a_checkpoint_keeps_exactly_what_led_to_it(run):
    run.truncate_logs(2)  # resuming from checkpoints/step_000002 (2 updates applied)
    assert [r["step"] for r in run.read(METRICS)] == [1, 2]
    assert [r["step"] for r in run.read(SAMPLES)] == [1, 1, 2, 2]
    assert [r["step"] for r in run.read(FITNESS)] == [0, 1]
    assert [r["step"] for r in run.read(EVALS)] == [0, 2]


def test_a_torn_last_line_is_skipped_and_repaired(run):
    text = (run / METRICS).read_text()
    (run / METRICS).write_text(text[:-7])  # the last append was cut short
    assert [r["step"] for r in run.read(METRICS)] == [1, 2, 3]
    run.truncate_logs(4)
    assert (run / METRICS).read_text().endswith("\n")
    assert [r["step"] for r in read_jsonl(run / METRICS)] == [1, 2, 3]


def test_a_complete_line_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')  # valid JSON, but the newline never made it
    assert read_jsonl(path) == [{"step": 1}]


def test_a_bad_line_in_the_middle_is_one_line_error_naming_file_and_line(run):
    lines = (run / METRICS).read_text().splitlines()
    lines[1] = '{"step": 2, '
    (run / METRICS).write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError) as err:
        run.read(METRICS)
    assert str(METRICS) in str(err.value) and "line 2" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_appends_are_lines_and_copy_history_is_a_replayable_run_dir(run, tmp_path):
    cfg = load_config(None, ["model=tiny-random", "data.path=x.jsonl"])
    run.save_config(cfg)
    run.append(FITNESS, {"step": 4, "fitness": [1.0, -1.0]})
    assert run.fitness_steps() == 5
    dest = tmp_path / "export" / "training"
    nbytes = run.copy_history(dest, 2)
    copy = RunDir(dest)
    assert RunDir.holds_run(dest) and copy.load_config() == cfg
    assert [r["step"] for r in copy.read(FITNESS)] == [0, 1]
    assert nbytes == (dest / FITNESS).stat().st_size == run.fitness_log_bytes(2)
    assert [r["step"] for r in copy.read(EVALS)] == [0, 2]


def test_checkpoints_are_complete_numbered_folders_only(tmp_path):
    run = RunDir(tmp_path / "run")
    for step, complete in ((2, True), (10, True), (100, True), (1000, False)):
        folder = run.checkpoint_dir(step)
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"step": step, "base_model": "/nowhere"}))
    (run / "checkpoints" / ".step_000200.tmp-1").mkdir()  # a writer's temporary folder
    (run / "checkpoints" / "step_x").mkdir()
    assert list(run.checkpoints()) == [2, 10, 100]
    assert run.latest_checkpoint() == run.checkpoint_dir(100)
    assert run.recorded_base_and_targets() is None  # the recorded base model is gone
    run.prune_checkpoints(2)
    assert list(run.checkpoints()) == [10, 100]


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="no config.yaml"):
        RunDir(tmp_path).load_config()
    with pytest.raises(RunDirError, match="not found"):
        RunDir(tmp_path / "missing").load_config()


def test_metrics_written_under_the_old_names_read_under_the_trackers(tmp_path):
    """metrics.jsonl uses TRL's names now; a run logged before reads the same way (report, replay)."""
    run = RunDir(tmp_path / "old")
    run.path.mkdir()
    _write(run / METRICS, [{"step": 1, "reward_mean": 0.5, "lr": 0.1, "reward/math_accuracy": 0.25,
                            "reward/math_accuracy/missing": 0.0, "fitness_std": 1.0}])
    assert run.read(METRICS) == [{"step": 1, "reward": 0.5, "learning_rate": 0.1, "rewards/math_accuracy/mean": 0.25,
                                  "rewards/math_accuracy/missing": 0.0, "fitness_std": 1.0}]
    _write(run / EVALS, [{"step": 0, "accuracy": 0.5, "reward_mean": 0.5}])
    assert run.read(EVALS) == [{"step": 0, "accuracy": 0.5, "reward_mean": 0.5}]  # eval.jsonl keeps its names
