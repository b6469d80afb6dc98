"""Experiment trackers: a run's metrics, evals and completions mirrored to TensorBoard, W&B,
trackio or MLflow (`report_to:` in the recipe, `--report-to` on the command line).

The JSONL files of the run directory stay the source of truth; a tracker is a view of them.
Metric names are TRL's where they mean the same (metrics.jsonl uses them: reward, reward_std,
rewards/<f>/mean|std|missing, frac_reward_zero_std, learning_rate, completions/*), so dashboards
line up with GRPO runs; eval records go to eval/<key> under the same names
(run_dir.metric_names); ours keep theirs (fitness_std, update_norm, sigma, time/*, memory/*).
Each tracker's library is an optional extra (`pip install 'eggroll-rl[tracking]'`), imported
only when that tracker is asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from typing import Any

import yaml

from .config import TRACKERS, RecipeConfig, to_dict
from .settings import ConfigError, flatten
from .run_dir import RunDir, metric_names
from .scoring import Scores, missing_as_none

PROJECT = os.environ.get("EGGROLL_RL_PROJECT", "eggroll-rl")


def tracker_names(report_to: list[str]) -> list[str]:
    """The trackers asked for (config.py checked the names), "none" and duplicates dropped."""
    return list(dict.fromkeys(n.strip().lower() for n in report_to if n.strip().lower() in TRACKERS))


def check_installed(report_to: list[str]) -> None:
    """ConfigError, before any work, for a tracker whose library is not installed."""
    for name in tracker_names(report_to):
        if importlib.util.find_spec(_MODULE[name]) is None:
            raise ConfigError(f"report_to: {name} is not installed; pip install {_INSTALL[name]} (or 'eggroll-rl[tracking]')")


def completions_table(rows: list[dict[str, Any]], scores: Scores) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of a step's completions as TRL's log_completions shows them: member,
    prompt, completion, total reward and each reward function's value (first sample)."""
    names = list(scores.per_reward)
    members, prompts = scores.total.shape[0], scores.total.shape[1]
    samples = scores.total.shape[2]
    table = []
    for m in range(members):
        for p in range(prompts):
            i = (m * prompts + p) * samples
            table.append([m, str(rows[p]["question"]), scores.completions[i], float(scores.total[m, p, 0]),
                          *(missing_as_none(scores.per_reward[n][m, p, 0]) for n in names)])
    return ["member", "prompt", "completion", "reward", *names], table


def trl_names(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics or eval record under tracker (TRL-style) names."""
    out = {}
    for key, value in metric_names(record).items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[prefix + key] = float(value)
    return out


class _TensorBoard:
    def __init__(self, run: RunDir, cfg: RecipeConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))
        self.writer.add_text("recipe", "```yaml\n" + _yaml(cfg) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run: RunDir, cfg: RecipeConfig) -> None:
        import wandb

        # The same W&B run across --resume: its id is the run directory's name.
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run.path.name, id=_run_id(run), resume="allow",
                              dir=str(run.path), config=to_dict(cfg))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run: RunDir, cfg: RecipeConfig) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=PROJECT, name=run.path.name, config=to_dict(cfg), resume="allow")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        import pandas as pd  # a trackio dependency

        self.trackio.log({name: self.trackio.Table(dataframe=pd.DataFrame(rows, columns=columns))}, step=step)

    def finish(self) -> None:
        self.trackio.finish()


class _MLflow:
    def __init__(self, run: RunDir, cfg: RecipeConfig) -> None:
        import mlflow

        self.mlflow = mlflow
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating experiment" chatter
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # A local file store in the run directory: no server or database (mlflow-skinny has no
            # SQLAlchemy). MLflow 3 keeps it working behind an opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run.path / "mlruns").resolve().as_uri())
        mlflow.set_experiment(PROJECT)
        existing = mlflow.search_runs(filter_string=f"tags.eggroll_run = '{run.path.name}'", output_format="list")
        self.active = mlflow.start_run(run_id=existing[0].info.run_id if existing else None, run_name=run.path.name,
                                       tags={"eggroll_run": run.path.name})
        if not existing:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        # MLflow names allow letters, digits, _ - . / and spaces
        self.mlflow.log_metrics({re.sub(r"[^\w\-./ ]", "_", k): v for k, v in metrics.items()}, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        self.mlflow.log_table(data=data, artifact_file=f"{name}/step_{step:06d}.json")

    def finish(self) -> None:
        self.mlflow.end_run()


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio, "mlflow": _MLflow}
_MODULE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
_INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow-skinny"}


class Trackers:
    """The recipe's trackers as one: each call goes to all of them."""

    def __init__(self, run: RunDir, cfg: RecipeConfig) -> None:
        self._all = [_BACKENDS[name](run, cfg) for name in tracker_names(cfg.report_to)]

    def __bool__(self) -> bool:
        return bool(self._all)

    def log(self, record: dict[str, Any], step: int, prefix: str = "") -> None:
        metrics = trl_names(record, prefix)
        for tracker in self._all:
            tracker.log(metrics, step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        for tracker in self._all:
            tracker.table(name, columns, rows, step)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        for tracker in self._all:
            tracker.finish()


def _run_id(run: RunDir) -> str:
    return re.sub(r"[^\w\-]", "-", run.path.resolve().name)[:64]


def _yaml(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)



def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:300]
