"""Export a run as a Hugging Face model folder that transformers and vLLM load as is.

    eggroll-rl export RUN_DIR [--step N] [--out DIR] [--replay] [--force] [--as-adapter [--rank R | --energy E]]

The folder (default ``<run>/export``, or ``<run>/export-step_N`` for an earlier step):

    config.json, generation_config.json        the base model's (a generation config is made if absent)
    tokenizer files, chat_template.jinja        the base model's tokenizer with its chat template
    model.safetensors                           every weight under the base checkpoint's own names, in
                                                its dtype: trained matrices from the fp32 master copy
    README.md                                   model card with Hub metadata (card.py)
    training_curves.png                         train reward per step, eval accuracy per evaluation
    training/config.yaml, fitness.jsonl,        the resolved recipe and the run's logs up to the step: a
             metrics.jsonl, eval.jsonl          run directory that `export --replay` rebuilds the weights from
    .eggroll_export.json                        local provenance (run, step, hashes); never uploaded

Weights come from the run's checkpoint of that step (``checkpoints/step_N/model.safetensors``,
already merged, base names and dtype), or with ``--replay`` from the fitness log alone (replay.py),
compared bit for bit with the checkpoint of that step when one exists (model.py).

With ``--as-adapter`` the folder (default ``<run>/adapter-r16``, ``<run>/adapter-e0.99``, ...) holds
a PEFT LoRA adapter of the learned change instead of config, tokenizer and weights
(adapter.py); card, plot, training/ and the manifest are as above.

The folder is built in a temporary sibling and renamed into place (files.py): an interrupted
export never leaves a folder that looks complete, and a non-empty ``--out`` is only replaced with
``--force``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from ..adapter import ADAPTER_WEIGHTS, RankChoice
from ..files import atomic_folder
from ..params import WEIGHTS_FILE, weight_dtypes
from ..run_dir import EVALS, FITNESS, METRICS, RunDir
from .adapter import evaluate_adapter, write_learned_adapter
from .card import PLOT_FILE, CardInputs, eval_before_after, plot_training_curves, render_model_card
from .model import write_model_files
from .plan import AdapterReport, ExportError, ExportPlan, ExportResult, plan_export

MANIFEST = ".eggroll_export.json"
TRAINING_DIR = "training"
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                      "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


# ----------------------------------------------------------------------------------------
# Small helpers


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_bytes(path: Path | None) -> int:
    if path is None or not Path(path).is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def list_files(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> list[tuple[str, int]]:
    """(relative posix path, size) of every file under `folder`, sorted, minus `exclude`."""
    folder = Path(folder)
    out = []
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            rel = f.relative_to(folder).as_posix()
            if rel not in exclude:
                out.append((rel, f.stat().st_size))
    return out


def default_out(run: RunDir, step: int, final_step: int, adapter: RankChoice | None = None) -> Path:
    name = "export" if adapter is None else f"adapter-{adapter.label}"
    return run / (name if step == final_step else f"{name}-step_{step}")


# ----------------------------------------------------------------------------------------
# The card


def _dtype_names(dtypes: dict[str, str]) -> str:
    return ", ".join(sorted({SAFETENSORS_DTYPES.get(d, d) for d in dtypes.values()}))


def _model_name(plan: ExportPlan, repo_id: str | None, adapter: AdapterReport | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    name = plan.cfg.run_name or plan.run.path.name
    return f"{name}-eggroll" + ("-lora" if adapter else "") + ("" if plan.step == plan.final_step else f"-step{plan.step}")


def _weights_file(dest: Path, adapter: AdapterReport | RankChoice | None) -> Path:
    return Path(dest) / (WEIGHTS_FILE if adapter is None else ADAPTER_WEIGHTS)


def _write_card(plan: ExportPlan, dest: Path, base_dir: Path, repo_id: str | None, fitness_bytes: int,
                adapter: AdapterReport | None = None) -> tuple[CardInputs, str]:
    """Render README.md and the training-curve plot into `dest`; (inputs, sha256 of the card)."""
    weights = _weights_file(dest, adapter)
    card = CardInputs(
        cfg=plan.cfg,
        step=plan.step,
        total_steps=plan.logged_steps or plan.final_step,
        base_model_dir=Path(base_dir),
        source=plan.source,
        metrics=plan.run.records_upto(METRICS, plan.step),
        evals=plan.run.records_upto(EVALS, plan.step),
        repo_id=repo_id,
        model_name=_model_name(plan, repo_id, adapter),
        weights_bytes=weights.stat().st_size,
        fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=folder_bytes(plan.checkpoint),
        weights_dtype=_dtype_names(weight_dtypes(weights)),
        adapter=adapter,
    )
    plot_training_curves(card.metrics, card.evals, dest / PLOT_FILE, card.step)
    text = render_model_card(card)
    (dest / "README.md").write_text(text)
    return card, hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------
# Build


def _build(plan: ExportPlan, dest: Path, repo_id: str | None, choice: RankChoice | None = None,
           eval_as: Path | None = None) -> ExportResult:
    """Write the whole export into `dest` (an empty folder): a model, or with `choice` an adapter,
    evaluated as the folder `eval_as` when that is given."""
    report, replay_seconds, verified, notes = None, 0.0, None, []
    if choice is None:
        base_dir, replay_seconds, verified, notes = write_model_files(plan, dest)
    else:
        base_dir, report = write_learned_adapter(plan, dest, choice)
        if eval_as is not None:
            evaluate_adapter(plan, dest, eval_as, report)
    fitness_bytes = plan.run.copy_history(dest / TRAINING_DIR, plan.step)
    card, readme_sha = _write_card(plan, dest, base_dir, repo_id, fitness_bytes, report)

    manifest = {
        "run_dir": str(plan.run.path.resolve()),
        "step": plan.step,
        "source": plan.source,
        "checkpoint": str(plan.checkpoint.resolve()) if plan.checkpoint is not None else None,
        "base_model": str(base_dir),
        "repo_id": repo_id,
        "weights_sha256": sha256_file(_weights_file(dest, report)),
        "readme_sha256": readme_sha,
        "verified": verified,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "adapter": report.to_dict() if report is not None else None,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    before, after = eval_before_after(card.evals, plan.step)
    return ExportResult(
        out=dest, step=plan.step, source=plan.source, files=list_files(dest),
        weights_bytes=card.weights_bytes, fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=card.checkpoint_bytes, verified=verified, replay_seconds=replay_seconds,
        eval_before=before, eval_after=after, notes=notes, adapter=report,
    )


# ----------------------------------------------------------------------------------------
# Reuse (push an export made earlier)


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def reusable_export(out: Path, plan: ExportPlan, choice: RankChoice | None = None) -> dict | None:
    """The manifest of `out` if it is an intact export of the same run, step and source (and for
    an adapter, the same rank choice)."""
    m = read_manifest(out)
    if not m:
        return None
    same = m.get("run_dir") == str(plan.run.path.resolve()) and m.get("step") == plan.step and m.get("source") == plan.source
    same = same and (m.get("adapter") or {}).get("choice") == (choice.as_dict() if choice else None)
    weights = _weights_file(out, choice)
    if not same or not weights.is_file() or sha256_file(weights) != m.get("weights_sha256"):
        return None
    return m


def _reuse(out: Path, plan: ExportPlan, manifest: dict, repo_id: str | None, dry_run: bool) -> ExportResult:
    """Keep an existing export; refresh its card for `repo_id` unless the user edited it."""
    notes = []
    adapter = AdapterReport(**manifest["adapter"]) if manifest.get("adapter") else None
    readme = out / "README.md"
    fitness_log = out / TRAINING_DIR / FITNESS
    fitness_bytes = fitness_log.stat().st_size if fitness_log.is_file() else 0
    if repo_id and manifest.get("repo_id") != repo_id and not dry_run:
        current = hashlib.sha256(readme.read_bytes()).hexdigest() if readme.is_file() else None
        if current == manifest.get("readme_sha256"):
            base_dir = Path(manifest.get("base_model") or out)
            _, manifest["readme_sha256"] = _write_card(plan, out, base_dir, repo_id, fitness_bytes, adapter)
            manifest["repo_id"] = repo_id
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            notes.append(f"model card updated for {repo_id}")
        else:
            notes.append("README.md was edited after the export: uploaded as it is")
    before, after = eval_before_after(plan.run.records_upto(EVALS, plan.step), plan.step)
    return ExportResult(
        out=out, step=plan.step, source=manifest["source"], files=list_files(out),
        weights_bytes=_weights_file(out, adapter).stat().st_size,
        fitness_log_bytes=fitness_bytes, checkpoint_bytes=folder_bytes(plan.checkpoint),
        written=not dry_run, reused=True, verified=manifest.get("verified"),
        eval_before=before, eval_after=after, notes=notes, adapter=adapter,
    )


def export_run(
    run_dir: Path,
    out: Path | None = None,
    step: int | None = None,
    replay: bool = False,
    force: bool = False,
    repo_id: str | None = None,
    dry_run: bool = False,
    reuse: bool = False,
    adapter: RankChoice | None = None,
    evaluate: bool = True,
) -> ExportResult:
    """Export a run's weights (checkpoint or replay) as a HF model folder, or with `adapter` as a
    LoRA adapter (evaluated unless `evaluate` is False); see the module doc.

    `reuse`: an existing `out` that is an intact export of the same run/step/source is kept
    (pushing an export made earlier) instead of refused. `dry_run`: build in a temporary folder,
    list the files, write nothing (and evaluate nothing).
    """
    plan = plan_export(run_dir, step, replay)
    out = Path(out) if out is not None else default_out(plan.run, plan.step, plan.final_step, adapter)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        manifest = reusable_export(out, plan, adapter) if reuse else None
        if manifest is None:
            raise ExportError(f"--out {out}: exists and is not empty; pass --force to replace it, or choose another --out")
        return _reuse(out, plan, manifest, repo_id, dry_run)

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="eggroll-export-") as tmp:
            (Path(tmp) / "export").mkdir()
            result = _build(plan, Path(tmp) / "export", repo_id, adapter)
            result.out, result.written = out, False
            return result

    with atomic_folder(out, readable=True) as tmp:
        result = _build(plan, tmp, repo_id, adapter, eval_as=out if evaluate else None)
    result.out = out
    result.files = list_files(out)
    return result
