"""The files of a merged-model export: weights, config and tokenizer, checked to be a plain HF model.

run.py builds an export and writes its card and manifest; this module writes the model itself
into the (temporary) export folder, as adapter.py writes an adapter:

* weights: the checkpoint's ``model.safetensors`` of that step (already merged, base names and
  dtype), or replayed from the fitness log (replay.py), then compared bit for bit with the
  checkpoint of that step when one exists;
* config, tokenizer, chat template and a generation config (made when the base has none);
* checked: base names and dtypes only (no adapter or fused engine names), no quantization_config,
  the base's chat template intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from ..checkpoint import MASTER_FILE, merged_state_dict, read_state
from ..params import WEIGHTS_FILE, copy_model_files, save_tensors, weight_dtypes
from ..replay import ReplayError, replay_master
from .plan import ExportError, ExportPlan

# Tensor names an inference engine or an adapter library would have added: never in an export.
FOREIGN_NAME_MARKERS = ("lora_A", "lora_B", "lora_embedding", "base_layer", ".lora.")


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
# The weights


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


def write_model_files(plan: ExportPlan, dest: Path) -> tuple[Path, float, str | None, list[str]]:
    """The merged weights, config and tokenizer into `dest`, checked to be a plain HF model;
    (base model folder, replay seconds, verification, notes)."""
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
    validate_export(dest, expected, _has_chat_template(model_src))
    return base_dir, replay_seconds, verified, notes
