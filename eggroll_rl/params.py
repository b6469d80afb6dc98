"""Which weights EGGROLL perturbs, and reading/writing Hugging Face model folders' weights."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def select_targets(shapes: dict[str, tuple[int, ...]], patterns: list[str]) -> list[str]:
    """Names of 2-D weights whose name fully matches one of `patterns`, in checkpoint order."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n, s in shapes.items() if len(s) == 2 and any(c.fullmatch(n) for c in compiled)]


WEIGHTS_FILE = "model.safetensors"
# Weight files in any format a model folder may carry: never copied as "model files".
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json", ".msgpack", ".h5")
# Files that describe one folder, not the model: its card and our bookkeeping
# (checkpoint.STATE_FILE, the alias conversion record, export.MANIFEST).
NOT_MODEL_FILES = ("README.md", "trainer_state.json", "eggroll_source.json", ".eggroll_export.json")


def copy_model_files(src: Path, dest: Path) -> list[str]:
    """Copy config, tokenizer, chat template and generation config of a model folder: everything
    but the weights and per-folder files. Returns the names copied."""
    copied = []
    for item in sorted(Path(src).iterdir()):
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in NOT_MODEL_FILES:
            shutil.copyfile(item, Path(dest) / item.name)
            copied.append(item.name)
    return copied


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / f for f in files]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    return files


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor in a HF safetensors checkpoint, without loading data."""
    shapes = {}
    for path in weight_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def load_tensors(model_dir: str | Path, names: list[str] | None = None, dtype=None) -> dict[str, torch.Tensor]:
    """Read tensors (all, or `names`) from a HF safetensors checkpoint, optionally cast."""
    wanted = None if names is None else set(names)
    out = {}
    for path in weight_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if wanted is None or name in wanted:
                    t = f.get_tensor(name)
                    out[name] = t.to(dtype) if dtype is not None else t
    if wanted is not None and wanted - out.keys():
        missing = sorted(wanted - out.keys())[:3]
        raise KeyError(f"{model_dir} has no tensors named {missing}")
    return out


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})


def weight_dtypes(path: str | Path) -> dict[str, str]:
    """{name: safetensors dtype ("F32", "BF16", ...)} of a safetensors file or a model folder."""
    path = Path(path)
    out = {}
    for file in weight_files(path) if path.is_dir() else [path]:
        with safe_open(str(file), framework="pt") as f:
            out.update({name: str(f.get_slice(name).get_dtype()) for name in f.keys()})
    return out
