"""Every tracker, offline: a tiny run reports to all four, and each one's own reader finds the
metrics under TRL's names, the evals and the completions table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eggroll_rl.config import ConfigError, load_config
from eggroll_rl.tracking import trl_names

from support import TINY

STEPS = 3


def test_metric_names_follow_trl():
    record = {"step": 3, "reward_mean": 0.5, "reward/math_accuracy": 0.25, "reward/math_accuracy/missing": 0.0,
              "lr": 0.1, "fitness_std": 1.0, "time/step": 2.0, "memory/peak_rss_gb": 1.5, "n": 4, "bad": float("nan")}
    assert trl_names(record) == {"reward": 0.5, "rewards/math_accuracy/mean": 0.25, "rewards/math_accuracy/missing": 0.0,
                                 "learning_rate": 0.1, "fitness_std": 1.0, "time/step": 2.0,
                                 "memory/peak_rss_gb": 1.5, "n": 4.0}
    assert trl_names({"accuracy": 0.1}, prefix="eval/") == {"eval/accuracy": 0.1}


def test_unknown_tracker_is_a_recipe_error():
    with pytest.raises(ConfigError, match="report_to: unknown tracker 'tensorbord'"):
        load_config(TINY, ["report_to=[tensorbord]"])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A tiny run reporting to all four trackers, offline, in a fresh process (trackio reads its
    folder from the environment at import)."""
    tmp = tmp_path_factory.mktemp("tracked")
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "TRACKIO_DIR": str(tmp / "trackio"),
           "WANDB_SILENT": "true", "EGGROLL_RL_PROJECT": "eggroll-test", "WANDB_PROJECT": "project-from-wandb-env"}
    cli = [sys.executable, "-m", "eggroll_rl.cli", "train", TINY, "--report-to", "tensorboard,wandb,trackio,mlflow",
           f"train.steps={STEPS}", "train.log_completions_every=1", f"output_dir={tmp}"]
    out = subprocess.run(cli, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "tiny", tmp


@pytest.mark.slow
def test_tensorboard_event_files_read_back(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward", "reward_std", "learning_rate", "fitness_std", "update_norm", "eval/accuracy",
            "rewards/math_accuracy/mean", "memory/peak_rss_gb"} <= scalars
    assert [e.step for e in events.Scalars("reward")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [0, 2, 3]
    assert any(t.startswith("completions") for t in events.Tags()["tensors"])  # the text table


@pytest.mark.slow
def test_wandb_offline_run_has_the_metrics_and_tables(tracked_run):
    run, _ = tracked_run
    (offline,) = run.glob("wandb/offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records
    data = records.read_bytes()
    for key in (b"rewards/digit_fraction/mean", b"eval/accuracy", b"learning_rate", b"memory/peak_rss_gb",
                b"project-from-wandb-env"):  # W&B's own variable names the project, as for TRL users
        assert key in data, key
    tables = sorted(offline.glob("files/media/table/completions_*.table.json"))
    assert len(tables) == STEPS
    table = json.loads(tables[0].read_text())
    cfg = load_config(TINY)
    assert table["columns"][:4] == ["member", "prompt", "completion", "reward"]
    assert len(table["data"]) == cfg.es.population * cfg.es.prompts_per_step


@pytest.mark.slow
def test_mlflow_local_store_has_the_metric_history_and_table(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the run's local store, as the trainer wrote it
    run, _ = tracked_run
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "eggroll-test"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "reward")] == [1, 2, 3]
    assert mlrun.data.params["es.population"] == "8"
    artifacts = [a.path for a in client.list_artifacts(mlrun.info.run_id, "completions")]
    assert len(artifacts) == STEPS


@pytest.mark.slow
def test_trackio_local_database_has_the_metrics(tracked_run):
    _, tmp = tracked_run
    script = ("import json, trackio; logs = trackio.SQLiteStorage.get_logs('eggroll-test', 'tiny');"
              "print(json.dumps(sorted({k for row in logs for k in row})), len([r for r in logs if 'reward' in r]))")
    out = subprocess.run([sys.executable, "-c", script], env={**__import__("os").environ, "TRACKIO_DIR": str(tmp / "trackio")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    keys, rewards = out.stdout.strip().rsplit(" ", 1)
    assert {"reward", "eval/accuracy", "learning_rate"} <= set(json.loads(keys)) and int(rewards) == STEPS
