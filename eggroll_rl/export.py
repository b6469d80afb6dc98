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

The folder is built in a temporary sibling and renamed into place: an interrupted export never
leaves a folder that looks complete, and a non-empty ``--out`` is only replaced with ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .replay import FITNESS_LOG, ReplayError, load_run_config, read_jsonl

MANIFEST = ".eggroll_export.json"
TRAINING_DIR = "training"
WEIGHTS_FILE = "model.safetensors"
# Files of a checkpoint/base folder that are not part of the exported model.
NOT_MODEL_FILES = {"README.md", "trainer_state.json", "eggroll_source.json", MANIFEST}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json", ".msgpack", ".h5")
# Tensor names an inference engine or an adapter library would have added: never in an export.
FOREIGN_NAME_MARKERS = ("lora_A", "lora_B", "lora_embedding", "base_layer", ".lora.")


class ExportError(ValueError):
    """An export that cannot be done, explained in one line."""


@dataclass
class ExportPlan:
    run_dir: Path
    cfg: object
    step: int
    final_step: int
    replay: bool
    checkpoint: Path | None  # the checkpoint of `step` (source, or what a replay is checked against)
    logged_steps: int


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


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _log_bytes(path: Path, lines: int) -> int:
    """Bytes of the first `lines` non-empty lines of a JSONL log (newlines included)."""
    if not path.is_file():
        return 0
    kept = [ln for ln in path.read_text().splitlines() if ln.strip()][:lines]
    return sum(len(ln.encode()) + 1 for ln in kept)


def _records_upto(path: Path, step: int) -> list[dict]:
    """JSONL records of `path` whose step is <= `step` (tolerant: the logs are informational)."""
    if not path.is_file():
        return []
    try:
        recs = read_jsonl(path)
    except ReplayError:
        return []
    return [r for r in recs if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= step]


def default_out(run_dir: Path, step: int, final_step: int) -> Path:
    return Path(run_dir) / ("export" if step == final_step else f"export-step_{step}")


# ----------------------------------------------------------------------------------------
# Plan: which step, from where


def plan_export(run_dir: Path, step: int | None = None, replay: bool = False) -> ExportPlan:
    from .checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory '{run_dir}' not found")
    if step is not None and step < (0 if replay else 1):
        raise ExportError(f"--step: got {step}; expected a step >= {0 if replay else 1}")
    try:
        cfg = load_run_config(run_dir)
    except ReplayError as exc:
        raise ExportError(str(exc)) from None
    ckpts = {int(p.name.split("_")[1]): p for p in list_checkpoints(run_dir)}
    logged = _count_lines(run_dir / FITNESS_LOG)
    if replay:
        if logged == 0:
            raise ExportError(f"{run_dir / FITNESS_LOG}: missing or empty; --replay rebuilds weights from the run's fitness log")
        target = logged if step is None else step
        if target > logged:
            raise ExportError(f"--step {target}: the fitness log has {logged} steps; replay can rebuild steps 0..{logged}")
        return ExportPlan(run_dir, cfg, target, logged, True, ckpts.get(target), logged)
    if not ckpts:
        hint = f"; rebuild the weights from the fitness log with --replay" if logged else ""
        raise ExportError(f"{run_dir}: no complete checkpoint in {run_dir / 'checkpoints'}{hint}")
    final = max(ckpts)
    target = final if step is None else step
    if target not in ckpts:
        have = ", ".join(str(s) for s in sorted(ckpts))
        hint = f"; --replay --step {target} rebuilds it from the fitness log" if 0 < target <= logged else ""
        raise ExportError(f"--step {target}: no checkpoint of that step (checkpoints: {have}){hint}")
    return ExportPlan(run_dir, cfg, target, final, False, ckpts[target], logged)


# ----------------------------------------------------------------------------------------
# Build


def _copy_model_files(src: Path, dest: Path) -> list[str]:
    copied = []
    for item in sorted(Path(src).iterdir()):
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in NOT_MODEL_FILES:
            shutil.copyfile(item, dest / item.name)
            copied.append(item.name)
    return copied


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
    if (dest / "generation_config.json").is_file():
        return
    from transformers import AutoConfig, GenerationConfig

    GenerationConfig.from_model_config(AutoConfig.from_pretrained(dest)).save_pretrained(dest)


SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                      "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _weight_names_and_dtypes(path: Path) -> dict[str, str]:
    """{name: safetensors dtype ("F32", "BF16", ...)} of a safetensors file, or of a model folder."""
    from safetensors import safe_open

    from .params import _weight_files

    path = Path(path)
    files = _weight_files(path) if path.is_dir() else [path]
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out.update({name: str(f.get_slice(name).get_dtype()) for name in f.keys()})
    return out


def _dtype_names(dtypes: dict[str, str]) -> str:
    return ", ".join(sorted({SAFETENSORS_DTYPES.get(d, d) for d in dtypes.values()}))


def validate_export(folder: Path, expected: dict[str, str], chat_template: bool) -> None:
    """The folder is a plain HF model: base names and dtypes, config, tokenizer (+ chat template)."""
    from transformers import AutoConfig, AutoTokenizer

    got = _weight_names_and_dtypes(folder / WEIGHTS_FILE)
    foreign = [n for n in got if any(m in n for m in FOREIGN_NAME_MARKERS)]
    if foreign:
        raise ExportError(f"export: adapter/engine tensor names in the weights: {foreign[:3]}")
    if set(got) != set(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise ExportError(f"export: weight names differ from the base checkpoint (extra {extra[:3]}, missing {missing[:3]})")
    bad = [n for n in got if got[n] != expected[n]]
    if bad:
        raise ExportError(f"export: {bad[0]} is {got[bad[0]]}, the base checkpoint has {expected[bad[0]]}")
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None):
        raise ExportError("export: config.json carries a quantization_config, but the weights are plain")
    tok = AutoTokenizer.from_pretrained(folder)
    if chat_template and not getattr(tok, "chat_template", None):
        raise ExportError("export: the base model's chat template did not survive the export")


def _card_inputs(plan: ExportPlan, base_dir: Path, repo_id: str | None, name: str, weights: Path,
                 fitness_bytes: int, checkpoint_bytes: int, weights_dtype: str):
    from .model_card import CardInputs

    run = plan.run_dir
    return CardInputs(
        cfg=plan.cfg,
        step=plan.step,
        total_steps=plan.logged_steps or plan.final_step,
        base_model_dir=Path(base_dir),
        source="replay" if plan.replay else "checkpoint",
        metrics=_records_upto(run / "metrics.jsonl", plan.step),
        evals=_records_upto(run / "eval.jsonl", plan.step),
        repo_id=repo_id,
        model_name=name,
        weights_bytes=weights.stat().st_size,
        fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=checkpoint_bytes,
        weights_dtype=weights_dtype,
    )


def _model_name(plan: ExportPlan, repo_id: str | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    name = plan.cfg.run_name or plan.run_dir.name
    return f"{name}-eggroll" + ("" if plan.step == plan.final_step else f"-step{plan.step}")


def _write_card(dest: Path, card_inputs) -> str:
    from .model_card import PLOT_FILE, plot_training_curves, render_model_card

    plot_training_curves(card_inputs.metrics, card_inputs.evals, dest / PLOT_FILE, card_inputs.step)
    text = render_model_card(card_inputs)
    tmp = dest / "README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, dest / "README.md")
    return hashlib.sha256(text.encode()).hexdigest()


def _base_dir_of_checkpoint(ckpt: Path) -> Path:
    from .checkpoint import STATE_FILE

    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return ckpt
    return Path(state.get("base_model") or ckpt)


def _build(plan: ExportPlan, dest: Path, repo_id: str | None) -> ExportResult:
    """Write the whole export into `dest` (an empty folder)."""
    import torch
    from safetensors.torch import load_file

    from .checkpoint import merged_state_dict
    from .params import save_tensors

    run = plan.run_dir
    verified = None
    replay_seconds = 0.0
    notes: list[str] = []
    if plan.replay:
        from .replay import replay_master

        try:
            rr = replay_master(run, plan.step)
        except ReplayError as exc:
            raise ExportError(str(exc)) from None
        base_dir, model_src = rr.base_model_dir, rr.base_model_dir
        replay_seconds = rr.seconds
        tensors = merged_state_dict(base_dir, rr.master)
        save_tensors(tensors, dest / WEIGHTS_FILE)
        expected = _weight_names_and_dtypes(base_dir)  # the base checkpoint's names and dtypes
        fitness_bytes = rr.log_bytes
        if plan.checkpoint is not None:
            saved_master = load_file(str(plan.checkpoint / "trainer" / "master.safetensors"))
            saved_model = load_file(str(plan.checkpoint / WEIGHTS_FILE))
            same_master = saved_master.keys() == rr.master.keys() and all(torch.equal(saved_master[k], rr.master[k]) for k in saved_master)
            same_model = saved_model.keys() == tensors.keys() and all(torch.equal(saved_model[k], tensors[k]) for k in saved_model)
            rel = plan.checkpoint.relative_to(run) if plan.checkpoint.is_relative_to(run) else plan.checkpoint
            if same_master and same_model:
                verified = f"bitwise equal to {rel} (model.safetensors and trainer/master.safetensors)"
            else:
                diff = max(
                    (float((saved_master[k] - rr.master[k]).abs().max()) for k in saved_master if k in rr.master),
                    default=float("nan"),
                )
                verified = f"NOT bitwise equal to {rel} (max |Δ| of the fp32 master {diff:.3g})"
                notes.append(verified)
        del tensors
    else:
        ckpt = plan.checkpoint
        base_dir, model_src = _base_dir_of_checkpoint(ckpt), ckpt
        if not (ckpt / WEIGHTS_FILE).is_file():
            raise ExportError(f"{ckpt}: no {WEIGHTS_FILE}")
        shutil.copyfile(ckpt / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        expected = _weight_names_and_dtypes(ckpt / WEIGHTS_FILE)
        if (Path(base_dir) / "config.json").is_file():  # the base's names and dtypes, when it is still there
            expected = _weight_names_and_dtypes(base_dir)
        fitness_bytes = _log_bytes(run / FITNESS_LOG, plan.step)

    _copy_model_files(model_src, dest)
    _ensure_generation_config(dest)

    training = dest / TRAINING_DIR
    training.mkdir()
    shutil.copyfile(run / "config.yaml", training / "config.yaml")
    if (run / FITNESS_LOG).is_file():
        lines = [ln for ln in (run / FITNESS_LOG).read_text().splitlines() if ln.strip()][: plan.step]
        (training / FITNESS_LOG).write_text("".join(ln + "\n" for ln in lines))
    for log in ("metrics.jsonl", "eval.jsonl"):
        recs = _records_upto(run / log, plan.step)
        if recs:
            (training / log).write_text("".join(json.dumps(r) + "\n" for r in recs))

    checkpoint_bytes = folder_bytes(plan.checkpoint) if plan.checkpoint is not None else 0
    weights_dtype = _dtype_names(expected)
    card = _card_inputs(plan, base_dir, repo_id, _model_name(plan, repo_id), dest / WEIGHTS_FILE,
                        fitness_bytes, checkpoint_bytes, weights_dtype)
    readme_sha = _write_card(dest, card)

    validate_export(dest, expected, _has_chat_template(model_src))

    from .model_card import eval_before_after

    before, after = eval_before_after(card.evals, plan.step)
    manifest = {
        "run_dir": str(run.resolve()),
        "step": plan.step,
        "source": "replay" if plan.replay else "checkpoint",
        "checkpoint": str(plan.checkpoint.resolve()) if plan.checkpoint is not None else None,
        "base_model": str(base_dir),
        "repo_id": repo_id,
        "weights_sha256": sha256_file(dest / WEIGHTS_FILE),
        "readme_sha256": readme_sha,
        "verified": verified,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for f in dest.rglob("*"):  # safetensors writes 0600; a model folder is read by everyone
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    return ExportResult(
        out=dest, step=plan.step, source=manifest["source"], files=list_files(dest),
        weights_bytes=(dest / WEIGHTS_FILE).stat().st_size, fitness_log_bytes=fitness_bytes,
        checkpoint_bytes=checkpoint_bytes, verified=verified, replay_seconds=replay_seconds,
        eval_before=before, eval_after=after, notes=notes,
    )


# ----------------------------------------------------------------------------------------
# Reuse (push an export made earlier) and the atomic write


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
    same = (
        m.get("run_dir") == str(plan.run_dir.resolve())
        and m.get("step") == plan.step
        and m.get("source") == ("replay" if plan.replay else "checkpoint")
    )
    weights = Path(out) / WEIGHTS_FILE
    if not same or not weights.is_file() or sha256_file(weights) != m.get("weights_sha256"):
        return None
    return m


def _reuse(out: Path, plan: ExportPlan, manifest: dict, repo_id: str | None) -> ExportResult:
    """Keep an existing export; refresh its card for `repo_id` unless the user edited it."""
    from .model_card import eval_before_after

    notes = []
    readme = out / "README.md"
    if repo_id and manifest.get("repo_id") != repo_id:
        current = hashlib.sha256(readme.read_bytes()).hexdigest() if readme.is_file() else None
        if current == manifest.get("readme_sha256"):
            base_dir = Path(manifest.get("base_model") or out)
            card = _card_inputs(
                plan, base_dir, repo_id, _model_name(plan, repo_id), out / WEIGHTS_FILE,
                _log_bytes(out / TRAINING_DIR / FITNESS_LOG, plan.step),
                folder_bytes(plan.checkpoint) if plan.checkpoint is not None else 0,
                _dtype_names(_weight_names_and_dtypes(out / WEIGHTS_FILE)),
            )
            manifest["readme_sha256"] = _write_card(out, card)
            manifest["repo_id"] = repo_id
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            notes.append(f"model card updated for {repo_id}")
        else:
            notes.append("README.md was edited after the export: uploaded as it is")
    evals = _records_upto(plan.run_dir / "eval.jsonl", plan.step)
    before, after = eval_before_after(evals, plan.step)
    log = out / TRAINING_DIR / FITNESS_LOG
    return ExportResult(
        out=out, step=plan.step, source=manifest["source"], files=list_files(out),
        weights_bytes=(out / WEIGHTS_FILE).stat().st_size,
        fitness_log_bytes=log.stat().st_size if log.is_file() else 0,
        checkpoint_bytes=folder_bytes(plan.checkpoint) if plan.checkpoint is not None else 0,
        reused=True, verified=manifest.get("verified"), eval_before=before, eval_after=after, notes=notes,
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
    out = Path(out) if out is not None else default_out(plan.run_dir, plan.step, plan.final_step)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not force:
        manifest = reusable_export(out, plan) if reuse else None
        if manifest is not None:
            if dry_run:
                return ExportResult(out=out, step=plan.step, source=manifest["source"], files=list_files(out),
                                    weights_bytes=(out / WEIGHTS_FILE).stat().st_size, fitness_log_bytes=0,
                                    checkpoint_bytes=0, written=False, reused=True, verified=manifest.get("verified"))
            return _reuse(out, plan, manifest, repo_id)
        raise ExportError(f"--out {out}: exists and is not empty; pass --force to replace it, or choose another --out")

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="eggroll-export-") as tmp:
            result = _build(plan, _mk(Path(tmp) / "export"), repo_id)
            result.out, result.written = out, False
            return result

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _build(plan, tmp, repo_id)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
    result.out = out
    result.files = list_files(out)
    return result


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
