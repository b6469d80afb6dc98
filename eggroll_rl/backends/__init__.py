"""Population backends: the pure-PyTorch reference and vLLM (per-request LoRA adapters)."""

from __future__ import annotations

from pathlib import Path

from ..config import RecipeConfig
from ..data import PromptLengths
from ..machine import engine_kind, resolve_dtype
from .base import Backend, Rollout

def make_backend(cfg: RecipeConfig, model_dir: Path, targets: list[str], engine_log: Path | None = None,
                 prompt_lengths: PromptLengths = PromptLengths()) -> Backend:
    """The recipe's backend; `auto` is vLLM whenever it is installed, else PyTorch. An engine
    (vLLM) writes what it prints, and its log, to `engine_log` when given (None: the console).
    `prompt_lengths`: of the prompts it will see, which size vLLM's KV cache and blocks on CPU."""
    kind = engine_kind(cfg)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    # Each engine's module is imported only when chosen (vLLM takes seconds to import).
    if kind == "vllm":
        from .vllm_engine import engine_options, output_to, route_engine_logs

        options = engine_options(cfg, model_dir, dtype, prompt_lengths)
        # Importing and starting vLLM prints dozens of lines (per-tensor dtype notes, Triton,
        # deprecations): they belong in the engine log, not on the console.
        with output_to(engine_log):
            from .vllm_backend import VLLMBackend

            backend = VLLMBackend(
                model_dir, targets, rank=cfg.es.rank, population=cfg.es.population,
                dtype=dtype, seed=cfg.seed, engine_options=options, engine_log=engine_log,
            )
        if engine_log is not None:
            route_engine_logs(engine_log)
        return backend
    from .torch_backend import TorchBackend

    return TorchBackend(model_dir, targets, dtype=dtype, device=cfg.device, compile=cfg.generation.compile,
                        prompt_lengths=prompt_lengths)


__all__ = ["Backend", "Rollout", "make_backend"]
