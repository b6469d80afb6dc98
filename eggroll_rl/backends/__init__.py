"""Population backends: the pure-PyTorch reference and vLLM (per-request LoRA adapters)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..config import RecipeConfig
from .base import Backend, Rollout


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_backend(cfg: RecipeConfig, model_dir: Path, targets: list[str], engine_log: Path | None = None) -> Backend:
    """The recipe's backend; `auto` is vLLM whenever it is installed, else PyTorch. An engine
    running in processes of its own (vLLM) writes their output to `engine_log` when given."""
    kind = cfg.backend
    if kind == "auto":
        kind = "vllm" if vllm_available() else "torch"
    # Each engine's module is imported only when chosen (vLLM takes seconds to import).
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(
            model_dir, targets, rank=cfg.es.rank, population=cfg.es.population,
            dtype=cfg.dtype, seed=cfg.seed, engine_options=cfg.vllm, engine_log=engine_log,
        )
    from .torch_backend import TorchBackend

    return TorchBackend(model_dir, targets, dtype=cfg.dtype, device=cfg.device)


__all__ = ["Backend", "Rollout", "make_backend", "vllm_available"]
