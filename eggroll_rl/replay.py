"""Replay: rebuild a run's weights from its fitness log alone.

An EGGROLL run's trained weights are a pure function of the base model, the seed, the optimizer
settings and the per-step fitness vectors: the noise of step t is regenerated from
(seed, t, pair, parameter) (noise.py) and the update is a deterministic function of that noise and
the fitness (es.py). The trainer logs every step's shaped fitness in ``fitness.jsonl`` (run_dir.py)
(``{"step": t, "fitness": [N floats]}``, t 0-based) as ``fitness.tolist()`` of a float64 tensor,
and JSON floats round-trip exactly, so

    learner = Learner.start(base);  learner.catch_up(fitness_0 .. fitness_T-1)     (learner.py)

gives back, bit for bit on the same kind of machine (CPU, fp32), the master weights the run saved
at step T, with no checkpoint at all: a few KB of log instead of a full model per checkpoint.

As a guard against a log that does not belong to this recipe (edited, truncated, recipe changed on
``--resume``), the replay compares each step's lr, sigma and update norm with the run's
``metrics.jsonl`` when it is there and stops at the first step that disagrees.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, RecipeConfig
from .learner import Learner
from .models import resolve_model
from .prepare import model_targets
from .run_dir import FITNESS, METRICS, RunDir

# Relative difference allowed between a replayed and a logged update norm: far above float noise
# (different BLAS/threads), far below what a wrong fitness vector or recipe produces.
UPDATE_NORM_RTOL = 1e-3


class ReplayError(ValueError):
    """A run that cannot be replayed, explained in one line."""


@dataclass
class ReplayResult:
    master: dict[str, torch.Tensor]  # the replayed fp32 master copy of the perturbed matrices
    steps: int  # updates applied (the weights are those of checkpoint step_<steps>)
    base_model_dir: Path
    targets: list[str]
    log_bytes: int  # bytes of the fitness log needed for these steps
    checked_steps: int = 0  # steps whose lr/sigma/update norm matched metrics.jsonl
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def read_fitness_log(run: RunDir, population: int, steps: int | None = None) -> list[list[float]]:
    """Fitness vectors of steps 0..steps-1 (default: all logged). Checks order and sizes."""
    path = run / FITNESS
    if not path.is_file():
        raise ReplayError(f"{path} not found; replay needs the run's fitness log (written by `eggroll-rl train`)")
    try:
        records = run.read(FITNESS)
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    vectors: list[list[float]] = []
    for rec in records[:steps]:
        if not isinstance(rec, dict) or rec.get("step") != len(vectors):
            got = rec.get("step") if isinstance(rec, dict) else rec
            raise ReplayError(f"{path}: record {len(vectors) + 1} has step {got!r}; expected step {len(vectors)} (steps must be 0, 1, 2, ... in order)")
        fit = rec.get("fitness")
        if not isinstance(fit, list) or len(fit) != population or not all(isinstance(v, (int, float)) for v in fit):
            raise ReplayError(f"{path}: step {rec['step']}: expected a list of {population} numbers (es.population), got {str(fit)[:60]}")
        vectors.append([float(v) for v in fit])
    if steps is not None and len(vectors) < steps:
        raise ReplayError(f"{path} has {len(vectors)} steps; cannot replay up to step {steps}")
    return vectors


def base_and_targets(run: RunDir, cfg: RecipeConfig) -> tuple[Path, list[str]]:
    """The base model folder and target names the run used: as its checkpoints recorded them
    (the model as resolved when the run started), else derived from the recipe as the trainer
    derives them (no checkpoint left)."""
    recorded = run.recorded_base_and_targets()
    if recorded is not None:
        return recorded
    base = resolve_model(cfg.model)
    try:
        return base, model_targets(base, cfg.es.targets)
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def replay_master(run_dir: Path, steps: int | None = None, check_metrics: bool = True) -> ReplayResult:
    """Rebuild the fp32 master weights after `steps` updates (default: every logged step)."""
    run = RunDir(run_dir)
    t0 = time.perf_counter()
    try:
        cfg = run.load_config()
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    if steps is not None and steps < 0:
        raise ReplayError(f"--step: got {steps}; expected an integer >= 0")
    vectors = read_fitness_log(run, cfg.es.population, steps)
    if not vectors and steps is None:
        raise ReplayError(f"{run / FITNESS} is empty; the run has no completed step to replay")
    base, targets = base_and_targets(run, cfg)

    # metrics are logged after the update: step t's record has "step": t+1
    logged = {rec["step"] - 1: rec for rec in run.read(METRICS)
              if check_metrics and isinstance(rec, dict) and isinstance(rec.get("step"), int)}

    learner = Learner.start(cfg, base, targets)
    checked = 0
    for step, fit in enumerate(vectors):
        stats = learner.tell(fit)
        rec = logged.get(step)
        if rec is None:
            continue
        for key, value, rtol in (("learning_rate", stats.lr, 0.0), ("sigma", stats.sigma, 0.0), ("update_norm", stats.update_norm, UPDATE_NORM_RTOL)):
            if key in rec and isinstance(rec[key], (int, float)) and not _close(float(rec[key]), value, rtol):
                raise ReplayError(
                    f"replay diverged from the run at step {step}: {key} {value:.6g} vs {float(rec[key]):.6g} in metrics.jsonl "
                    "(was fitness.jsonl edited, or the recipe changed on --resume?)"
                )
        checked += 1
    return ReplayResult(
        master=learner.master,
        steps=len(vectors),
        base_model_dir=base,
        targets=targets,
        log_bytes=run.fitness_log_bytes(len(vectors)),
        checked_steps=checked,
        seconds=time.perf_counter() - t0,
    )
