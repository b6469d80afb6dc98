"""Which weights EGGROLL perturbs, and reading/writing them as Hugging Face safetensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def select_targets(shapes: dict[str, tuple[int, ...]], patterns: list[str]) -> list[str]:
    """Names of 2-D weights whose name fully matches one of `patterns`, in checkpoint order."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n, s in shapes.items() if len(s) == 2 and any(c.fullmatch(n) for c in compiled)]


def _weight_files(model_dir: Path) -> list[Path]:
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
    for path in _weight_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def load_tensors(model_dir: str | Path, names: list[str] | None = None, dtype=None) -> dict[str, torch.Tensor]:
    """Read tensors (all, or `names`) from a HF safetensors checkpoint, optionally cast."""
    wanted = None if names is None else set(names)
    out = {}
    for path in _weight_files(Path(model_dir)):
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
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})
