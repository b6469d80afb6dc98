"""`export --as-adapter`: what a run learned, ΔW = W_final − W_base, as a PEFT LoRA adapter.

run.py builds the export (step, checkpoint or replay, output folder, reuse, card, manifest) for
both kinds; this module writes the adapter's own files and measures it (eggroll_rl/adapter.py does
the math):

    adapter_config.json, adapter_model.safetensors   load as they are in peft.PeftModel and in vLLM
                                                     with a LoRARequest (max_lora_rank >= r)

ΔW is taken against the ORIGINAL base: the model the run started from, or, when that model was a
PEFT adapter merged into its base (models.adapter_origin), that base, so that the new adapter
holds the old adapter's change plus the run's and applies to the same model. The matrices are the
run's targets plus those the old adapter changed. W_final is the run's fp32 master copy (exact),
from the checkpoint of the step or replayed from the fitness log.

The report (plan.AdapterReport): PEFT's r and the smallest rank used, the fraction of ΔW's
energy kept overall and in the worst matrix, the adapter's size next to the merged model's and,
when the run has a held-out set, the adapter's accuracy (base + adapter merged, evaluated as
`eggroll-rl eval` does) next to the merged model's: the run's own eval of that step when it made
one (a fresh eval of the checkpoint gives the same completions), else a fresh eval of the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..adapter import ADAPTER_WEIGHTS, AdapterError, RankChoice, factorize, write_adapter
from ..backends.vllm_engine import VLLM_LORA_RANKS, vllm_lora_rank
from ..checkpoint import MASTER_FILE
from ..models import adapter_origin, merge_adapter, portable_spec
from ..params import WEIGHTS_FILE, checkpoint_shapes, load_tensors
from ..replay import base_and_targets, replay_master
from ..run_dir import ENGINE_LOG, EVALS
from .plan import AdapterReport, ExportPlan

if TYPE_CHECKING:
    import torch

# Eval summary fields the report keeps (the per-prompt list only serves the paired difference).
EVAL_FIELDS = ("accuracy", "ci_low", "ci_high", "reward_mean", "n")


# ----------------------------------------------------------------------------------------
# The change


def original_base(plan: ExportPlan) -> tuple[str, Path, Path, list[str]]:
    """(spec of the original base, its folder, the folder the run started from, the weights an
    adapter merged into that start changed: [] when it was no adapter)."""
    start, _ = base_and_targets(plan.run, plan.cfg)
    origin = adapter_origin(start)
    if origin is None:
        return portable_spec(plan.cfg.model, start), start, start, []
    return origin.base_model, origin.base_folder(), start, origin.weights


def learned_change(plan: ExportPlan, base_dir: Path, start: Path, adapter_weights: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(weight name, ΔW in fp32) per changed matrix, computed one at a time as they are consumed."""
    import torch
    from safetensors.torch import load_file

    master = replay_master(plan.run.path, plan.step).master if plan.replay else load_file(str(plan.checkpoint / MASTER_FILE))
    extra = [w for w in adapter_weights if w not in master]  # the old adapter's, untouched by the run
    final = {**load_tensors(start, extra, dtype=torch.float32), **master}
    base = load_tensors(base_dir, list(final), dtype=torch.float32)
    for name in list(final):
        yield name, final.pop(name) - base.pop(name)


# ----------------------------------------------------------------------------------------
# The folder and its numbers


def write_learned_adapter(plan: ExportPlan, dest: Path, choice: RankChoice) -> tuple[Path, AdapterReport]:
    """Write the adapter files of `plan`'s step into `dest`; (original base folder, report without evals)."""
    base_spec, base_dir, start, adapter_weights = original_base(plan)
    factors = {}
    for name, delta in learned_change(plan, base_dir, start, adapter_weights):
        f = factorize(delta, choice)
        if f is not None:
            factors[name] = f
    if not factors:
        raise AdapterError(f"step {plan.step}: the weights equal the base model's; there is no change to export")
    model_weights = [n for n, shape in checkpoint_shapes(base_dir).items() if len(shape) == 2]
    config = write_adapter(dest, factors, base_spec, model_weights)
    worst = min(factors, key=lambda n: factors[n].kept / factors[n].total)
    merged = plan.checkpoint / WEIGHTS_FILE if plan.checkpoint is not None else None
    report = AdapterReport(
        choice=choice.as_dict(), base_model=base_spec, r=config["r"], min_rank=min(f.rank for f in factors.values()),
        matrices=len(factors),
        energy_kept=sum(f.kept for f in factors.values()) / sum(f.total for f in factors.values()),
        worst_matrix=worst, worst_energy=factors[worst].kept / factors[worst].total,
        adapter_bytes=(dest / ADAPTER_WEIGHTS).stat().st_size,
        merged_bytes=merged.stat().st_size if merged is not None and merged.is_file() else sum(
            f.stat().st_size for f in base_dir.glob("*.safetensors")),
        max_lora_rank=vllm_lora_rank(config["r"]) if config["r"] <= VLLM_LORA_RANKS[-1] else None,
    )
    return base_dir, report


def _kept(summary: dict, step: int) -> dict:
    return {"step": step, **{k: summary[k] for k in EVAL_FIELDS if k in summary}}


def evaluate_adapter(plan: ExportPlan, adapter_dir: Path, out: Path, report: AdapterReport) -> None:
    """Fill the report's held-out accuracies: the adapter in `adapter_dir` (to be renamed `out`),
    merged into its base as `eggroll-rl eval out` merges it, and the merged model."""
    from ..engines import evaluate_model
    from ..metrics import paired_difference_ci

    if not plan.cfg.data.eval_size:
        return
    log = plan.run / ENGINE_LOG
    adapter = evaluate_model(plan.cfg, str(merge_adapter(adapter_dir, str(Path(out).resolve()))), engine_log=log).summary()
    merged = next((e for e in plan.run.records_upto(EVALS, plan.step) if e["step"] == plan.step), None)
    if merged is None and plan.checkpoint is not None:
        merged = evaluate_model(plan.cfg, str(plan.checkpoint), engine_log=log).summary()
    report.eval_adapter = _kept(adapter, plan.step)
    if merged is not None:
        report.eval_merged = _kept(merged, plan.step)
        if len(merged.get("per_prompt") or []) == len(adapter["per_prompt"]):
            report.difference = list(paired_difference_ci(adapter["per_prompt"], merged["per_prompt"]))
