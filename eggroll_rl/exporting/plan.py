"""What an export is: its plan (which step, from a checkpoint or a replay), its result, an adapter's
report and the one-line error. The writers (model.py, adapter.py), the card (card.py) and the
orchestration (run.py) all build on these types; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RecipeConfig
from ..run_dir import FITNESS, RunDir


class ExportError(ValueError):
    """An export that cannot be done, explained in one line."""


@dataclass
class ExportPlan:
    run: RunDir
    cfg: RecipeConfig
    step: int
    final_step: int
    replay: bool
    checkpoint: Path | None  # the checkpoint of `step` (source, or what a replay is checked against)
    logged_steps: int

    @property
    def source(self) -> str:
        return "replay" if self.replay else "checkpoint"


@dataclass
class AdapterReport:
    """What an adapter export keeps of the learned change, its size and its held-out accuracy."""

    choice: dict[str, Any]  # RankChoice.as_dict()
    base_model: str  # the adapter's base_model_name_or_path
    r: int  # PEFT's r: the largest rank
    min_rank: int
    matrices: int
    energy_kept: float  # Σ kept σ² / Σ σ² over all matrices
    worst_matrix: str
    worst_energy: float
    adapter_bytes: int
    merged_bytes: int  # model.safetensors of the merged model (the checkpoint's, else base-sized)
    max_lora_rank: int | None  # the smallest vLLM max_lora_rank that loads it
    eval_adapter: dict | None = None
    eval_merged: dict | None = None
    difference: list[float] | None = None  # adapter − merged accuracy, paired 95% CI: [diff, low, high]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportResult:
    out: Path
    step: int
    source: str  # "checkpoint" | "replay"
    files: list[tuple[str, int]]  # (relative path, bytes), sorted
    weights_bytes: int
    fitness_log_bytes: int
    checkpoint_bytes: int  # the checkpoint folder of that step (weights + trainer state), 0 if none
    written: bool = True  # False for a dry run
    reused: bool = False  # an existing export of the same run/step/source was kept
    verified: str | None = None  # replay vs checkpoint comparison, in words
    replay_seconds: float = 0.0
    eval_before: dict | None = None
    eval_after: dict | None = None
    notes: list[str] = field(default_factory=list)
    adapter: AdapterReport | None = None  # an adapter export's rank, energy, sizes and evals

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_export(run_dir: Path, step: int | None = None, replay: bool = False) -> ExportPlan:
    """Which step to export and from where: the run's checkpoint of it, or with `replay` its fitness log."""
    run = RunDir(run_dir)
    if step is not None and step < (0 if replay else 1):
        raise ExportError(f"--step: got {step}; expected a step >= {0 if replay else 1}")
    try:
        cfg = run.load_config()
        logged = run.fitness_steps()
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    ckpts = run.checkpoints()
    if replay:
        if logged == 0:
            raise ExportError(f"{run / FITNESS}: missing or empty; --replay rebuilds weights from the run's fitness log")
        target = logged if step is None else step
        if target > logged:
            raise ExportError(f"--step {target}: the fitness log has {logged} steps; replay can rebuild steps 0..{logged}")
        return ExportPlan(run, cfg, target, logged, True, ckpts.get(target), logged)
    if not ckpts:
        hint = "; rebuild the weights from the fitness log with --replay" if logged else ""
        raise ExportError(f"{run}: no complete checkpoint in {run / 'checkpoints'}{hint}")
    final = max(ckpts)
    target = final if step is None else step
    if target not in ckpts:
        have = ", ".join(str(s) for s in ckpts)
        hint = f"; --replay --step {target} rebuilds it from the fitness log" if 0 < target <= logged else ""
        raise ExportError(f"--step {target}: no checkpoint of that step (checkpoints: {have}){hint}")
    return ExportPlan(run, cfg, target, final, False, ckpts[target], logged)
