"""Population backends: the pure-PyTorch reference and vLLM (per-request LoRA adapters)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import platform
from pathlib import Path

import torch

from ..config import RecipeConfig
from ..data import PromptLengths
from .base import Backend, Rollout


# /proc/cpuinfo flags of a CPU that computes bf16 natively (Intel AMX, AVX512-BF16, Zen 4+).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def read_cpuinfo() -> str:
    """Linux /proc/cpuinfo, or "" where there is none (then: no native bf16, the safe choice)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True if this CPU's flags (Linux /proc/cpuinfo) include a native bf16 instruction set."""
    return bool(native_bf16_flags(read_cpuinfo() if cpuinfo is None else cpuinfo))


def native_bf16_flags(cpuinfo: str) -> list[str]:
    """The flags of NATIVE_BF16_FLAGS that `cpuinfo` lists (every core lists the same)."""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU as figures must name it: model name plus family/model, since one model name (e.g.
    "AMD EPYC") covers CPUs with and without native bf16 and several-fold different speeds."""
    fields: dict[str, str] = {}
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def resolve_dtype(dtype: str, device: str = "auto") -> str:
    """The engine dtype for `dtype` (a recipe's `dtype`, maybe "auto") on this machine."""
    if dtype != "auto":
        return dtype
    if device != "cpu" and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def engine_kind(cfg: RecipeConfig) -> str:
    """The recipe's backend: `auto` is vLLM whenever it is installed, else PyTorch."""
    return ("vllm" if vllm_available() else "torch") if cfg.backend == "auto" else cfg.backend


def torch_engine_on_gpu(cfg: RecipeConfig) -> bool:
    """True when the recipe's engine is the PyTorch backend on this process's GPU, the case in
    which the noise and the master copy can live beside it."""
    wants_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return wants_gpu and cfg.cluster.workers == 1 and engine_kind(cfg) == "torch"


def resolve_placement(cfg: RecipeConfig, model_dir: Path, targets: list[str]) -> tuple[RecipeConfig, torch.device]:
    """(`cfg` with es.noise resolved, as the run records it; where the fp32 master lives).

    With the PyTorch backend on a GPU, the noise is philox-torch (drawn there, all pairs at once)
    and the master goes to the GPU (es.master_device: auto) when it, its optimizer state and the
    engine's weights take at most half of the free memory; elsewhere philox-numpy and the CPU.
    The master's place is not recorded: a run may resume on another machine."""
    from ..config import ConfigError
    from ..params import checkpoint_shapes

    es = cfg.es
    on_gpu = torch_engine_on_gpu(cfg)
    if es.master_device == "cuda" and not on_gpu:
        raise ConfigError("es.master_device=cuda needs the PyTorch backend on a GPU (backend=torch, a visible GPU, "
                          "cluster.workers=1); use es.master_device=auto or cpu")
    noise = es.noise if es.noise != "auto" else ("philox-torch" if on_gpu else "philox-numpy")
    master_device = es.master_device
    if master_device == "auto":
        master_device = "cpu"
        if on_gpu:
            shapes = checkpoint_shapes(model_dir)
            engine_dtype = getattr(torch, resolve_dtype(cfg.dtype, "cuda"))
            engine_bytes = sum(math.prod(s) for s in shapes.values()) * torch.finfo(engine_dtype).bits // 8
            slots = {"sgd": 1 if es.momentum else 0, "adam": 2}[es.optimizer]
            master_bytes = sum(math.prod(shapes[t]) for t in targets) * 4 * (1 + slots)
            free, _ = torch.cuda.mem_get_info()
            master_device = "cuda" if engine_bytes + master_bytes <= free / 2 else "cpu"
    return dataclasses.replace(cfg, es=dataclasses.replace(es, noise=noise)), torch.device(master_device)


def rows_per_call(cfg: RecipeConfig) -> int:
    """The most rows one generate call of the recipe asks for: a step's population or an eval."""
    per_step = cfg.es.population * cfg.es.prompts_per_step
    return max(per_step, cfg.data.eval_size) * cfg.generation.samples_per_prompt


def make_backend(cfg: RecipeConfig, model_dir: Path, targets: list[str], engine_log: Path | None = None,
                 prompt_lengths: PromptLengths = PromptLengths()) -> Backend:
    """The recipe's backend; `auto` is vLLM whenever it is installed, else PyTorch. An engine
    (vLLM) writes what it prints, and its log, to `engine_log` when given (None: the console).
    `prompt_lengths`: of the prompts it will see, which size vLLM's KV cache and blocks on CPU."""
    kind = engine_kind(cfg)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    # Each engine's module is imported only when chosen (vLLM takes seconds to import).
    if kind == "vllm":
        from .vllm_engine import CPU_MAX_NUM_SEQS, cpu_block_size, kv_cache_bytes, output_to, route_engine_logs

        options = dict(cfg.vllm)
        # On CPU, KV blocks that let the prefix cache share the prompts' common start, and a KV
        # cache the size of the recipe's batches (an explicit option or the VLLM_CPU_KVCACHE_SPACE
        # variable still wins); a GPU sizes it by memory utilization, in blocks of 16 tokens.
        if not torch.cuda.is_available():
            options.setdefault("block_size", cpu_block_size(prompt_lengths.shared_prefix))
            if "kv_cache_memory_bytes" not in options and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                tokens = prompt_lengths.longest + cfg.generation.max_new_tokens
                options["kv_cache_memory_bytes"] = kv_cache_bytes(
                    model_dir, dtype, rows_per_call(cfg), tokens, int(options.get("max_num_seqs", CPU_MAX_NUM_SEQS)),
                    block_size=int(options["block_size"]))
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


__all__ = ["Backend", "Rollout", "make_backend", "vllm_available"]
