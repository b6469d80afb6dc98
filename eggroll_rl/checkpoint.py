"""A checkpoint folder: a Hugging Face model folder plus the trainer state, written atomically.

    step_000010/
        config.json, tokenizer files, generation_config.json   (copied from the base model)
        model.safetensors      all weights, perturbed matrices from the fp32 master, base dtype
        trainer_state.json     step, seed, optimizer step count, base model, targets
        trainer/master.safetensors     fp32 master copy of the perturbed matrices (exact resume)
        trainer/optimizer.safetensors  optimizer moments

(The trainer's tensors sit in a subfolder so that engines globbing `*.safetensors` in the
model folder, vLLM among them, see only the model.)

A checkpoint is built in a temporary folder, fsynced, and renamed into place (files.py): a crash
mid-write never leaves a checkpoint that looks complete, and one reported written survives a
power loss. Where checkpoints live and which exist is the run directory's business (run_dir.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_folder

if TYPE_CHECKING:
    import torch

# torch, safetensors and params (which imports torch) are imported inside the functions that
# write and read tensors: the run directory asks this module which checkpoints are complete,
# and the CLI must answer `--help` or a bad recipe without loading torch.

STATE_FILE = "trainer_state.json"
MASTER_FILE = "trainer/master.safetensors"
OPTIMIZER_FILE = "trainer/optimizer.safetensors"


def is_complete(path: Path) -> bool:
    """True for a checkpoint folder that was completely written (its state file is last in)."""
    return (Path(path) / STATE_FILE).is_file()


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint ({} when unreadable)."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def merged_state_dict(base_model_dir: Path, master: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base checkpoint's tensors with the perturbed matrices replaced, in the base dtype."""
    from .params import load_tensors

    tensors = load_tensors(base_model_dir)
    for name, value in master.items():
        tensors[name] = value.to(tensors[name].dtype)
    return tensors


def save_checkpoint(
    dest: Path,
    base_model_dir: Path,
    master: dict[str, torch.Tensor],
    optimizer_state: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint folder `dest` (replacing one that is there) and return it."""
    from .params import WEIGHTS_FILE, copy_model_files, save_tensors

    with atomic_folder(dest, durable=True) as tmp:
        copy_model_files(base_model_dir, tmp)
        save_tensors(merged_state_dict(base_model_dir, master), tmp / WEIGHTS_FILE)
        (tmp / "trainer").mkdir()
        save_tensors(master, tmp / MASTER_FILE)
        save_tensors(optimizer_state, tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    return Path(dest)


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer state, fp32 master, optimizer tensors) of one checkpoint."""
    from safetensors.torch import load_file

    return read_state(path), load_file(str(path / MASTER_FILE)), load_file(str(path / OPTIMIZER_FILE))
