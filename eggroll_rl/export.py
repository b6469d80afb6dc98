"""Export a run as a Hugging Face model folder that transformers and vLLM load as is.

    eggroll-rl export RUN_DIR [--step N] [--out DIR] [--replay] [--force]

The folder (default ``<run>/export``, or ``<run>/export-step_N`` for an earlier step):

    config.json, generation_config.json        the base model's (a generation config is made if absent)
    tokenizer files, chat_template.jinja        the base model's tokenizer with its chat template
    model.safetensors                           every weight under the base checkpoint's own names, in
                                                its dtype: trained matrices from the fp32 master copy
    README.md                                   model card with Hub metadata (model_card.py)
    training_curves.png                         train reward per step, eval accuracy per evaluation
    training/config.yaml, fitness.jsonl,        the resolved recipe and the run's logs up to the step: a
             metrics.jsonl, eval.jsonl          run directory that `export --replay` rebuilds the weights from
    .eggroll_export.json                        local provenance (run, step, hashes); never uploaded

Weights come from the run's checkpoint of that step (``checkpoints/step_N/model.safetensors``,
already merged, base names and dtype), or with ``--replay`` from the fitness log alone (replay.py),
compared bit for bit with the checkpoint of that step when one exists.

The folder is built in a temporary sibling and renamed into place (files.py): an interrupted
export never leaves a folder that looks complete, and a non-empty ``--out`` is only replaced with
``--force``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from .checkpoint import MASTER_FILE, merged_state_dict, read_state
from .config import ConfigError, RecipeConfig
from .files import atomic_folder
from .model_card import PLOT_FILE, CardInputs, eval_before_after, plot_training_curves, render_model_card
from .params import WEIGHTS_FILE, copy_model_files, save_tensors, weight_dtypes
from .replay import ReplayError, replay_master
from .run_dir import EVALS, FITNESS, METRICS, RunDir

MANIFEST = ".eggroll_export.json"
TRAINING_DIR = "training"
# Tensor names an inference engine or an adapter library would have added: never in an export.
FOREIGN_NAME_MARKERS = ("lora_A", "lora_B", "lora_embedding", "base_layer", ".lora.")
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                      "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


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

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


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


def default_out(run: RunDir, step: int, final_step: int) -> Path:
    return run / ("export" if step == final_step else f"export-step_{step}")


# ----------------------------------------------------------------------------------------
# Plan: which step, from where


def plan_export(run_dir: Path, step: int | None = None, replay: bool = False) -> ExportPlan:
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


# ----------------------------------------------------------------------------------------
# The folder is a plain Hugging Face model


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("chat_template"))
        except (json.JSONDecodeError, AttributeError):
            return False
    return False


def _ensure_generation_config(dest: Path) -> None:
    if not (dest / "generation_config.json").is_file():
        GenerationConfig.from_model_config(AutoConfig.from_pretrained(dest)).save_pretrained(dest)


def _dtype_names(dtypes: dict[str, str]) -> str:
    return ", ".join(sorted({SAFETENSORS_DTYPES.get(d, d) for d in dtypes.values()}))


def validate_export(folder: Path, expected: dict[str, str], chat_template: bool) -> None:
    """The folder is a plain HF model: base names and dtypes, config, tokenizer (+ chat template)."""
    got = weight_dtypes(folder / WEIGHTS_FILE)
    foreign = [n for n in got if any(m in n for m in FOREIGN_NAME_MARKERS)]
    if foreign:
        raise ExportError(f"export: adapter/engine tensor names in the weights: {foreign[:3]}")
    if set(got) != set(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise ExportError(f"export: weight names differ from the base checkpoint (extra {extra[:3]}, missing {missing[:3]})")
    bad = [n for n in got if got[n] != expected[n]]
    if bad:
        raise ExportError(f"export: {bad[0]} is {got[bad[0]]}, the base checkpoint has {expected[bad[0]]}")
    if getattr(AutoConfig.from_pretrained(folder), "quantization_config", None):
        raise ExportError("export: config.json carries a quantization_config, but the weights are plain")
    if chat_template and not getattr(AutoTokenizer.from_pretrained(folder), "chat_template", None):
        raise ExportError("export: the base model's chat template did not survive the export")


# ----------------------------------------------------------------------------------------
# The card


def _model_name(plan: ExportPlan, repo_id: str | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    name = plan.cfg.run_name or plan.run.path.name
    return f"{name}-eggroll" + ("" if plan.step == plan.final_step else f"-step{plan.step}")


def _write_card(plan: ExportPlan, dest: Path, base_dir: Path, repo_id: str | None, fitness_bytes: int) -> tuple[CardInputs, str]:
    """Render README.md and the training-curve plot into `dest`; (inputs, sha256 of the card)."""
    card = CardInputs(
        cfg=plan.cfg,
        step=plan.step,
        total_steps=plan.logged_steps or plan.final_step,
        base_model_dir=Path(base_dir),
        source=plan.source,
        metrics=plan.run.records_upto(METRICS, plan.step),
        evals=plan.run.records_upto(EVALS, plan.step),
        repo_id=repo_id,
        model_name=_model_name(plan, repo_id),
        weights_bytes=(dest / WEIGHTS_FILE).stat().st_size,
        fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=folder_bytes(plan.checkpoint),
        weights_dtype=_dtype_names(weight_dtypes(dest / WEIGHTS_FILE)),
    )
    plot_training_curves(card.metrics, card.evals, dest / PLOT_FILE, card.step)
    text = render_model_card(card)
    (dest / "README.md").write_text(text)
    return card, hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------
# Build


def _replay_weights(plan: ExportPlan, dest: Path) -> tuple[Path, float, str | None, list[str]]:
    """Weights rebuilt from the fitness log into `dest`, compared with the checkpoint of that
    step when there is one; (base model folder, seconds, verification, notes)."""
    try:
        rr = replay_master(plan.run.path, plan.step)
    except ReplayError as exc:
        raise ExportError(str(exc)) from None
    tensors = merged_state_dict(rr.base_model_dir, rr.master)
    save_tensors(tensors, dest / WEIGHTS_FILE)
    if plan.checkpoint is None:
        return rr.base_model_dir, rr.seconds, None, []
    saved_master = load_file(str(plan.checkpoint / MASTER_FILE))
    saved_model = load_file(str(plan.checkpoint / WEIGHTS_FILE))
    same_master = saved_master.keys() == rr.master.keys() and all(torch.equal(saved_master[k], rr.master[k]) for k in saved_master)
    same_model = saved_model.keys() == tensors.keys() and all(torch.equal(saved_model[k], tensors[k]) for k in saved_model)
    rel = plan.checkpoint.relative_to(plan.run.path) if plan.checkpoint.is_relative_to(plan.run.path) else plan.checkpoint
    if same_master and same_model:
        return rr.base_model_dir, rr.seconds, f"bitwise equal to {rel} (model.safetensors and {MASTER_FILE})", []
    diff = max((float((saved_master[k] - rr.master[k]).abs().max()) for k in saved_master if k in rr.master), default=float("nan"))
    verified = f"NOT bitwise equal to {rel} (max |Δ| of the fp32 master {diff:.3g})"
    return rr.base_model_dir, rr.seconds, verified, [verified]


def _build(plan: ExportPlan, dest: Path, repo_id: str | None) -> ExportResult:
    """Write the whole export into `dest` (an empty folder)."""
    verified, replay_seconds, notes = None, 0.0, []
    if plan.replay:
        base_dir, replay_seconds, verified, notes = _replay_weights(plan, dest)
        model_src = base_dir
        expected = weight_dtypes(base_dir)  # the base checkpoint's names and dtypes
    else:
        model_src = plan.checkpoint
        base_dir = Path(read_state(model_src).get("base_model") or model_src)
        if not (model_src / WEIGHTS_FILE).is_file():
            raise ExportError(f"{model_src}: no {WEIGHTS_FILE}")
        shutil.copyfile(model_src / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        # the base's names and dtypes when it is still there, else the checkpoint's own
        expected = weight_dtypes(base_dir if (base_dir / "config.json").is_file() else model_src / WEIGHTS_FILE)

    copy_model_files(model_src, dest)
    _ensure_generation_config(dest)
    fitness_bytes = plan.run.copy_history(dest / TRAINING_DIR, plan.step)
    card, readme_sha = _write_card(plan, dest, base_dir, repo_id, fitness_bytes)
    validate_export(dest, expected, _has_chat_template(model_src))

    manifest = {
        "run_dir": str(plan.run.path.resolve()),
        "step": plan.step,
        "source": plan.source,
        "checkpoint": str(plan.checkpoint.resolve()) if plan.checkpoint is not None else None,
        "base_model": str(base_dir),
        "repo_id": repo_id,
        "weights_sha256": sha256_file(dest / WEIGHTS_FILE),
        "readme_sha256": readme_sha,
        "verified": verified,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    before, after = eval_before_after(card.evals, plan.step)
    return ExportResult(
        out=dest, step=plan.step, source=plan.source, files=list_files(dest),
        weights_bytes=card.weights_bytes, fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=card.checkpoint_bytes, verified=verified, replay_seconds=replay_seconds,
        eval_before=before, eval_after=after, notes=notes,
    )


# ----------------------------------------------------------------------------------------
# Reuse (push an export made earlier)


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def reusable_export(out: Path, plan: ExportPlan) -> dict | None:
    """The manifest of `out` if it is an intact export of the same run, step and source."""
    m = read_manifest(out)
    if not m:
        return None
    same = m.get("run_dir") == str(plan.run.path.resolve()) and m.get("step") == plan.step and m.get("source") == plan.source
    weights = Path(out) / WEIGHTS_FILE
    if not same or not weights.is_file() or sha256_file(weights) != m.get("weights_sha256"):
        return None
    return m


def _reuse(out: Path, plan: ExportPlan, manifest: dict, repo_id: str | None, dry_run: bool) -> ExportResult:
    """Keep an existing export; refresh its card for `repo_id` unless the user edited it."""
    notes = []
    readme = out / "README.md"
    fitness_log = out / TRAINING_DIR / FITNESS
    fitness_bytes = fitness_log.stat().st_size if fitness_log.is_file() else 0
    if repo_id and manifest.get("repo_id") != repo_id and not dry_run:
        current = hashlib.sha256(readme.read_bytes()).hexdigest() if readme.is_file() else None
        if current == manifest.get("readme_sha256"):
            base_dir = Path(manifest.get("base_model") or out)
            _, manifest["readme_sha256"] = _write_card(plan, out, base_dir, repo_id, fitness_bytes)
            manifest["repo_id"] = repo_id
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            notes.append(f"model card updated for {repo_id}")
        else:
            notes.append("README.md was edited after the export: uploaded as it is")
    before, after = eval_before_after(plan.run.records_upto(EVALS, plan.step), plan.step)
    return ExportResult(
        out=out, step=plan.step, source=manifest["source"], files=list_files(out),
        weights_bytes=(out / WEIGHTS_FILE).stat().st_size,
        fitness_log_bytes=fitness_bytes, checkpoint_bytes=folder_bytes(plan.checkpoint),
        written=not dry_run, reused=True, verified=manifest.get("verified"),
        eval_before=before, eval_after=after, notes=notes,
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
) -> ExportResult:
    """Export a run's weights (checkpoint or replay) as a HF model folder; see the module doc.

    `reuse`: an existing `out` that is an intact export of the same run/step/source is kept
    (pushing an export made earlier) instead of refused. `dry_run`: build in a temporary folder,
    list the files, write nothing.
    """
    plan = plan_export(run_dir, step, replay)
    out = Path(out) if out is not None else default_out(plan.run, plan.step, plan.final_step)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        manifest = reusable_export(out, plan) if reuse else None
        if manifest is None:
            raise ExportError(f"--out {out}: exists and is not empty; pass --force to replace it, or choose another --out")
        return _reuse(out, plan, manifest, repo_id, dry_run)

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="eggroll-export-") as tmp:
            (Path(tmp) / "export").mkdir()
            result = _build(plan, Path(tmp) / "export", repo_id)
            result.out, result.written = out, False
            return result

    with atomic_folder(out, readable=True) as tmp:
        result = _build(plan, tmp, repo_id)
    result.out = out
    result.files = list_files(out)
    return result
