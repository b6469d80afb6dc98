"""Replay: rebuild a run's weights from its fitness log alone.

An EGGROLL run's trained weights are a pure function of the base model, the seed, the optimizer
settings and the per-step fitness vectors: the noise of step t is regenerated from
(seed, t, pair, parameter) (noise.py) and the update is a deterministic function of that noise and
the fitness (es.py). The trainer logs every step's shaped fitness in ``fitness.jsonl``
(``{"step": t, "fitness": [N floats]}``, t 0-based) as ``fitness.tolist()`` of a float64 tensor,
and JSON floats round-trip exactly, so

    master = base targets (fp32);  for t in 0..T-1: es.tell(t, fitness_t, master)

gives back, bit for bit on the same kind of machine (CPU, fp32), the master weights the run saved
at step T, with no checkpoint at all: a few KB of log instead of a full model per checkpoint.

As a guard against a log that does not belong to this recipe (edited, truncated, recipe changed on
``--resume``), the replay compares each step's lr, sigma and update norm with the run's
``metrics.jsonl`` when it is there and stops at the first step that disagrees.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

FITNESS_LOG = "fitness.jsonl"
# The trainer's fitness tensors are float64 (scores are float64; shaping keeps the dtype), and the
# update subtracts mirrored pairs in that dtype before casting: replay must use the same one.
FITNESS_DTYPE = "float64"
# Relative difference allowed between a replayed and a logged update norm: far above float noise
# (different BLAS/threads), far below what a wrong fitness vector or recipe produces.
UPDATE_NORM_RTOL = 1e-3


class ReplayError(ValueError):
    """A run that cannot be replayed, explained in one line."""


@dataclass
class ReplayResult:
    master: dict  # {name: fp32 tensor}: the replayed master copy of the perturbed matrices
    steps: int  # updates applied (the weights are those of checkpoint step_<steps>)
    base_model_dir: Path
    targets: list[str]
    log_bytes: int  # bytes of the fitness log needed for these steps
    checked_steps: int = 0  # steps whose lr/sigma/update norm matched metrics.jsonl
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file, one-line errors naming the file and line."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{path}: line {i} is not valid JSON ({exc.msg})") from None
    return records


def read_fitness_log(run_dir: Path, population: int, steps: int | None = None) -> tuple[list[list[float]], int]:
    """(fitness vectors of steps 0..steps-1, bytes of those log lines). Checks order and sizes."""
    path = Path(run_dir) / FITNESS_LOG
    if not path.is_file():
        raise ReplayError(f"{path} not found; replay needs the run's fitness log (written by `eggroll-rl train`)")
    vectors: list[list[float]] = []
    nbytes = 0
    for i, line in enumerate(path.read_text().splitlines(keepends=True), 1):
        if not line.strip():
            continue
        if steps is not None and len(vectors) >= steps:
            break
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{path}: line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or rec.get("step") != len(vectors):
            got = rec.get("step") if isinstance(rec, dict) else rec
            raise ReplayError(f"{path}: line {i} has step {got!r}; expected step {len(vectors)} (steps must be 0, 1, 2, ... in order)")
        fit = rec.get("fitness")
        if not isinstance(fit, list) or len(fit) != population or not all(isinstance(v, (int, float)) for v in fit):
            raise ReplayError(f"{path}: step {rec['step']}: expected a list of {population} numbers (es.population), got {str(fit)[:60]}")
        vectors.append([float(v) for v in fit])
        nbytes += len(line.encode())
    if steps is not None and len(vectors) < steps:
        raise ReplayError(f"{path} has {len(vectors)} steps; cannot replay up to step {steps}")
    return vectors, nbytes


def run_base_and_targets(run_dir: Path, cfg) -> tuple[Path, list[str]]:
    """The base model folder and target names the run used.

    A checkpoint's trainer_state.json records both (the model as resolved when the run started);
    without checkpoints (deleted, or never written) they come from the recipe, as the trainer
    derived them.
    """
    from .checkpoint import STATE_FILE, list_checkpoints
    from .models import resolve_model
    from .params import checkpoint_shapes, select_targets

    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        base = state.get("base_model")
        if base and (Path(base) / "config.json").is_file() and state.get("targets"):
            return Path(base), list(state["targets"])
    base = resolve_model(cfg.model)
    targets = select_targets(checkpoint_shapes(base), cfg.es.targets)
    if not targets:
        raise ReplayError(f"es.targets: no 2-D weight of {base} matches {cfg.es.targets}")
    return Path(base), targets


def load_run_config(run_dir: Path):
    from .config import ConfigError, load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ReplayError(f"{run_dir}: no config.yaml; give a run directory written by `eggroll-rl train`")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ReplayError(f"{path}: {exc}") from None


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def replay_master(run_dir: Path, steps: int | None = None, check_metrics: bool = True) -> ReplayResult:
    """Rebuild the fp32 master weights after `steps` updates (default: every logged step)."""
    import time

    import torch

    from .es import EggrollES
    from .params import load_tensors

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg = load_run_config(run_dir)
    if steps is not None and steps < 0:
        raise ReplayError(f"--step: got {steps}; expected an integer >= 0")
    vectors, log_bytes = read_fitness_log(run_dir, cfg.es.population, steps)
    if not vectors and steps is None:
        raise ReplayError(f"{run_dir / FITNESS_LOG} is empty; the run has no completed step to replay")
    base, targets = run_base_and_targets(run_dir, cfg)

    logged: dict[int, dict] = {}
    metrics_path = run_dir / "metrics.jsonl"
    if check_metrics and metrics_path.is_file():
        for rec in read_jsonl(metrics_path):
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                logged[rec["step"] - 1] = rec  # metrics are logged after the update: step t+1

    master = load_tensors(base, targets, dtype=torch.float32)
    es = EggrollES(cfg.es, seed=cfg.seed, total_steps=cfg.train.steps)
    checked = 0
    for step, fit in enumerate(vectors):
        stats = es.tell(step, torch.tensor(fit, dtype=getattr(torch, FITNESS_DTYPE)), master)
        rec = logged.get(step)
        if rec is None:
            continue
        for key, value, rtol in (("lr", stats.lr, 0.0), ("sigma", stats.sigma, 0.0), ("update_norm", stats.update_norm, UPDATE_NORM_RTOL)):
            if key in rec and isinstance(rec[key], (int, float)) and not _close(float(rec[key]), value, rtol):
                raise ReplayError(
                    f"replay diverged from the run at step {step}: {key} {value:.6g} vs {float(rec[key]):.6g} in metrics.jsonl "
                    "(was fitness.jsonl edited, or the recipe changed on --resume?)"
                )
        checked += 1
    return ReplayResult(
        master=master,
        steps=len(vectors),
        base_model_dir=base,
        targets=targets,
        log_bytes=log_bytes,
        checked_steps=checked,
        seconds=time.perf_counter() - t0,
    )
