"""vLLM population backend: every member is a per-request LoRA adapter, built in memory.

One engine per backend, started once with LoRA enabled. For a step, the worker extension
(vllm_worker.py) regenerates each requested member's factors from (seed, step, pair, name) and
registers them as LoRA adapters (E_m = lora_B @ lora_A, lora_A = Bᵀ, lora_B = s·σ/√r·A);
then every (member, prompt) row goes to the engine in ONE ``LLM.generate`` call, row i with
its member's ``LoRARequest``. vLLM batches rows of different adapters together, so the base
weights are shared and each member costs only its rank-r side product: on CPU computed by
vllm_population.py (three dense products per layer), elsewhere by vLLM's own kernels.

Correctness rules kept here:

* Adapter names and ids are never reused (a global counter): vLLM's prefix cache keys blocks on
  the LoRA name, so a reused name with new weights would serve stale KV. Adapters are removed
  right after their generate call.
* ``load_weights`` reloads the base weights in place (``model_runner.reload_weights``), which
  drops all adapters; the prefix cache is reset too, so nothing computed with old weights is
  ever reused. The weights travel in the engine's dtype by the fastest route weight_transport.py
  has for where the worker runs (in this process on CPU: the tensors themselves).

Constraints: rank must be <= 512 (vLLM's ``max_lora_rank`` is rounded up to one of
1, 8, 16, 32, 64, 128, 256, 320, 512); targets must be linear layers vLLM can put LoRA on
(attention and MLP projections); on CPU the attention head dim must be one of
32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import GenerationConfig
from ..noise import NoiseSpec
from ..params import checkpoint_shapes, load_tensors
from .base import Backend, Rollout
from .vllm_engine import check_vllm_version, output_to, set_engine_env, shutdown_llm, vllm_lora_rank
from .weight_transport import WIRE_DTYPES, encode, to_shared_memory

# Fused vLLM layers: a checkpoint weight in one of these groups can only be reloaded together
# with the other members of its group (vLLM processes the fused layer once all are loaded).
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

WORKER_EXTENSION = "eggroll_rl.backends.vllm_worker.EggrollWorkerExtension"

# Never reused across backends in one process: adapter ids/names must stay unique.
_ADAPTER_COUNTER = itertools.count(1)


def _group_of(name: str) -> list[str] | None:
    """HF names of the fused group `name` belongs to (itself included), or None."""
    module, _, leaf = name.rpartition(".")
    parent, _, sub = module.rpartition(".")
    for group in FUSED_GROUPS:
        if sub in group:
            return [f"{parent}.{s}.{leaf}" for s in group]
    return None


class VLLMBackend(Backend):
    """Population generation in vLLM; members are in-memory LoRA adapters."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        targets: list[str],
        rank: int,
        population: int,
        dtype: str = "float32",
        seed: int = 0,
        engine_options: dict | None = None,
        engine_log: Path | None = None,
    ):
        check_vllm_version()
        if rank < 1:
            raise ValueError(f"rank: got {rank}; expected an integer >= 1")
        if population < 1:
            raise ValueError(f"population: got {population}; expected an integer >= 1")
        if not targets:
            raise ValueError("targets: empty; give at least one 2-D weight name")
        self.model_dir = str(model_dir)
        self.rank = rank
        self.population = population
        self.dtype = dtype
        self.seed = seed
        self._llm = None
        # load_weights hands tensors to an engine in another process through /dev/shm when it
        # has room, else as bytes.
        self.weights_via_shm = True

        shapes = checkpoint_shapes(self.model_dir)
        bad = [t for t in targets if t not in shapes or len(shapes[t]) != 2]
        if bad:
            raise ValueError(f"targets: {bad[:3]} are not 2-D weights of {self.model_dir}")
        self.targets = list(targets)
        self.shapes = {t: tuple(shapes[t]) for t in targets}
        # Group members that are not targets never change: keep their checkpoint values (and
        # fused-layer biases) to complete a reload of a group whose targets changed.
        extra = set()
        for t in self.targets:
            for g in _group_of(t) or []:
                if g not in self.shapes:
                    extra.add(g)
                bias = g[: -len(".weight")] + ".bias" if g.endswith(".weight") else None
                if bias and bias in shapes:
                    extra.add(bias)
        self._fixed = load_tensors(self.model_dir, sorted(extra)) if extra else {}

        options = dict(engine_options or {})
        # LoRA slots (adapters in one batch). Each slot costs max_lora_rank·(in+out) per target
        # on the device; past 64 the batches are large anyway, vLLM swaps adapters in and out.
        max_loras = int(options.pop("max_loras", min(population, 64)))
        max_cpu_loras = max(int(options.pop("max_cpu_loras", 0) or 0), population, max_loras)
        kwargs = dict(
            model=self.model_dir,
            dtype=dtype,
            seed=seed,
            enable_lora=True,
            max_lora_rank=vllm_lora_rank(rank),
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            # Only the targets' layers get vLLM's LoRA wrappers. Unrestricted, it wraps every
            # module it supports, the embedding and the logits too, and runs their LoRA terms
            # on every token although no adapter of ours has weights there; on CPU the logits
            # one gathers a (rows, vocab, rank) copy of its B per decode step.
            lora_target_modules=sorted({t.split(".")[-2] for t in self.targets}),
            worker_extension_cls=WORKER_EXTENSION,
            enable_prefix_caching=True,
        )
        if not torch.cuda.is_available():
            # vLLM 0.32 on CPU crashes the engine ("CPU Generator does not use offset") when a
            # seeded (sampling) request's prefill is split across steps; never split prefills.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(options)
        self.engine_kwargs = kwargs
        set_engine_env(kwargs)

        from vllm import LLM

        t0 = time.perf_counter()
        with output_to(engine_log):
            self._llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        # Clean shutdown when the backend is garbage-collected or at interpreter exit (Ctrl-C,
        # errors) if close() was never called; weakref.finalize also runs atexit.
        self._finalizer = weakref.finalize(self, shutdown_llm, self._llm)
        try:
            self._tokenizer = self._llm.get_tokenizer()
            items = [(t, self.shapes[t]) for t in self.targets]
            problems = self._rpc("eggroll_check_targets", items, rank)
            if problems:
                raise ValueError(f"targets: vLLM cannot perturb {problems[:3]} with LoRA")
            info = self._rpc("eggroll_worker_info")
            # How load_weights sends (weight_transport.py): the tensors themselves when the
            # worker runs in this process (vLLM's engine core in-process, as on CPU).
            self._worker_in_process = info["pid"] == os.getpid()
            self._wire_dtype = WIRE_DTYPES[info["dtype"]]
            # On CPU the population products beat vLLM's LoRA kernels (bench/population_throughput.py).
            self.use_population_products(True)
        except BaseException:
            self.close()
            raise
        self.last_adapter_seconds = 0.0

    # -- engine ------------------------------------------------------------------------

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError("vLLM backend is closed")
        return self._llm

    def _rpc(self, method: str, *args):
        return self.llm.collective_rpc(method, args=args)[0]

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            self._finalizer.detach()
            shutdown_llm(llm)

    def use_population_products(self, enabled: bool) -> bool:
        """Members' LoRA terms through vllm_population.py's dense products (True, the default)
        or vLLM's own multi-LoRA kernels (False; benchmarks compare the two); returns whether
        the products are used (they exist only on vLLM's CPU backend)."""
        self.population_products = self._rpc("eggroll_population_products", enabled)
        return self.population_products

    # -- Backend --------------------------------------------------------------------------

    def _sampling_params(self, gen: GenerationConfig, seed: int | None):
        from vllm import SamplingParams

        greedy = gen.temperature == 0
        return SamplingParams(
            n=gen.samples_per_prompt,
            max_tokens=gen.max_new_tokens,
            temperature=0.0 if greedy else gen.temperature,
            top_p=1.0 if greedy else gen.top_p,
            stop=list(gen.stop) or None,
            seed=None if greedy else seed,
            skip_special_tokens=True,
            include_stop_str_in_output=False,
            ignore_eos=gen.ignore_eos,
        )

    @staticmethod
    def _adapter_name(adapter_id: int, step: int, member: int) -> str:
        # Unique per adapter id: the prefix cache keys KV blocks on this name.
        return f"eggroll-{adapter_id}-s{step}-m{member}"

    def generate(
        self,
        prompt_ids: list[list[int]],
        gen: GenerationConfig,
        noise: NoiseSpec | None = None,
        members: Sequence[int] = (),
        seed: int = 0,
    ) -> Rollout:
        from vllm import TokensPrompt
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        members = list(members) if noise is not None else [None]
        if not prompt_ids:
            return Rollout.empty(len(members))
        if noise is not None:
            if noise.rank != self.rank:
                raise ValueError(f"noise.rank={noise.rank} but the engine was built for rank {self.rank}")
            if not members:
                raise ValueError("members: empty; give the member indices to generate for")
        # Sampling seeds depend on (seed, prompt) only: all members share them (common random
        # numbers), so member differences come from the weights, not from sampling luck.
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED])
        prompt_seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(prompt_ids))]

        ids: list[int] = []
        requests: list = []
        if noise is not None:
            ids = [next(_ADAPTER_COUNTER) for _ in members]
            items = [(t, self.shapes[t]) for t in self.targets]
            self.last_adapter_seconds = self._rpc(
                "eggroll_add_members", dataclasses.asdict(noise), [int(m) for m in members], ids, items,
            )
            requests = [
                LoRARequest(self._adapter_name(i, noise.step, m), i, "/eggroll/in-memory")
                for i, m in zip(ids, members)
            ]
        try:
            prompts, params, loras = [], [], []
            for j, _member in enumerate(members):
                for p, ids_p in enumerate(prompt_ids):
                    prompts.append(TokensPrompt(prompt_token_ids=list(map(int, ids_p))))
                    params.append(self._sampling_params(gen, prompt_seeds[p]))
                    loras.append(requests[j] if requests else None)
            outputs = self.llm.generate(
                prompts, params, use_tqdm=False, lora_request=loras if requests else None
            )
        finally:
            if ids:
                self._rpc("eggroll_remove", ids)

        # outputs are in request order: member-major, then prompt; each has its samples.
        per_row = iter(outputs)
        rows = [[next(per_row).outputs for _ in prompt_ids] for _ in members]
        token_ids = [[[list(c.token_ids) for c in row] for row in member] for member in rows]
        return Rollout(
            texts=[[[c.text for c in row] for row in member] for member in rows],
            new_tokens=sum(len(ids) for member in token_ids for row in member for ids in row),
            seconds=time.perf_counter() - t0,
            setup_seconds=self.last_adapter_seconds if noise is not None else 0.0,
            token_ids=token_ids,
            # vLLM's "length": stopped by max_tokens (not EOS, not a stop string).
            clipped=[[[c.finish_reason == "length" for c in row] for row in member] for member in rows],
        )

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        unknown = [n for n in weights if n not in self.shapes]
        if unknown:
            raise KeyError(f"load_weights: {unknown[:3]} are not targets of this backend")
        send: dict[str, torch.Tensor] = {}
        for name, t in weights.items():
            if tuple(t.shape) != self.shapes[name]:
                raise ValueError(f"load_weights: {name} has shape {tuple(t.shape)}, expected {self.shapes[name]}")
            send[name] = t
        # Complete every touched fused group (q/k/v, gate/up) and its biases.
        for name in list(send):
            for g in _group_of(name) or []:
                bias = g[: -len(".weight")] + ".bias"
                for n in (g, bias):
                    if n in send:
                        continue
                    if n in self._fixed:
                        send[n] = self._fixed[n]
                    elif n in self.shapes:
                        raise ValueError(
                            f"load_weights: {name} is fused with target {n} in vLLM; "
                            "send all targets of a fused group (q/k/v, gate/up) together"
                        )
        # Layer by layer (vLLM processes a layer once complete), cast once to the engine's dtype.
        send = dict(sorted(send.items()))
        if self._worker_in_process:
            weights = [(n, t.detach().to(self._wire_dtype)) for n, t in send.items()]
            self._rpc("eggroll_load_weights_local", weights)
        else:
            shm = to_shared_memory(send, self._wire_dtype) if self.weights_via_shm else None
            if shm is not None:
                block, slots = shm
                try:
                    self._rpc("eggroll_load_weights_shm", block.name, slots)
                finally:
                    block.close()
                    block.unlink()
            else:
                items = [encode(n, t, self._wire_dtype) for n, t in send.items()]
                self._rpc("eggroll_load_weights", items)
        # Reload dropped all adapters; KV computed with the old weights must not be reused.
        self.llm.reset_prefix_cache()
