"""Checkpoints: a Hugging Face model folder plus the trainer state, written atomically.

    <run>/checkpoints/step_000010/
        config.json, tokenizer files, generation_config.json   (copied from the base model)
        model.safetensors      all weights, perturbed matrices from the fp32 master, base dtype
        trainer_state.json     step, seed, optimizer step count, targets
        trainer/master.safetensors     fp32 master copy of the perturbed matrices (exact resume)
        trainer/optimizer.safetensors  optimizer moments

(The trainer's tensors sit in a subfolder so that engines globbing `*.safetensors` in the
model folder, vLLM among them, see only the model.)

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-write
never leaves a checkpoint that looks complete. `step_N` holds the weights after N updates.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .params import load_tensors, save_tensors

STATE_FILE = "trainer_state.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file() and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def copy_model_files(base_model_dir: Path, dest: Path) -> None:
    """Config, tokenizer and generation config of the base model: everything but the weights."""
    for item in Path(base_model_dir).iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in ("README.md", STATE_FILE):
            shutil.copy2(item, dest / item.name)


def merged_state_dict(base_model_dir: Path, master: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base checkpoint's tensors with the perturbed matrices replaced, in the base dtype."""
    tensors = load_tensors(base_model_dir)
    for name, value in master.items():
        tensors[name] = value.to(tensors[name].dtype)
    return tensors


def save_checkpoint(
    run_dir: Path,
    step: int,
    base_model_dir: Path,
    master: dict[str, torch.Tensor],
    optimizer_state: dict[str, torch.Tensor],
    state: dict,
    keep: int = 0,
) -> Path:
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_model_files(base_model_dir, tmp)
    save_tensors(merged_state_dict(base_model_dir, master), tmp / "model.safetensors")
    (tmp / "trainer").mkdir()
    save_tensors(master, tmp / "trainer" / "master.safetensors")
    save_tensors(optimizer_state, tmp / "trainer" / "optimizer.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer state, fp32 master, optimizer tensors) of one checkpoint."""
    state = json.loads((path / STATE_FILE).read_text())
    master = load_file(str(path / "trainer" / "master.safetensors"))
    optimizer = load_file(str(path / "trainer" / "optimizer.safetensors"))
    return state, master, optimizer
