"""Runs inside vLLM's worker process: population members as in-memory LoRA adapters.

Loaded by ``LLM(worker_extension_cls="eggroll_rl.backends.vllm_worker.EggrollWorkerExtension")``;
vLLM mixes this class into its worker, so ``self`` is the worker and the methods are reached with
``llm.collective_rpc("eggroll_...", args=...)``.

Only indices cross the process boundary: the worker regenerates every member's low-rank factors
from (seed, step, pair, name) with :mod:`eggroll_rl.noise` — the same pure function the trainer
uses — and turns them into a LoRA adapter per member:

    E_m = s·σ/√r · A·Bᵀ  =  lora_B @ lora_A · scaling,   lora_A = Bᵀ (r×in),
                                                          lora_B = s·σ/√r·A (out×r), scaling = 1

named per Hugging Face sub-module (q_proj, k_proj, v_proj, gate_proj, up_proj, ...) exactly as a
PEFT adapter would be, so vLLM packs them into its fused qkv_proj / gate_up_proj layers itself.
Adapters are registered straight into the worker's LoRA model manager
(``LoRAModel.from_lora_tensors`` + ``LRUCacheLoRAModelManager.add_adapter``); nothing touches
disk. A request whose ``lora_int_id`` is already registered is served from it without loading.

vLLM internals used (checked for the versions in ``vllm_engine.SUPPORTED_VLLM``):
``worker.model_runner.lora_manager`` (LRUCacheWorkerLoRAManager) and its ``_adapter_manager``
(LRUCacheLoRAModelManager: ``add_adapter``, ``remove_adapter``, ``list_adapters``, ``modules``),
``vllm.lora.lora_model.LoRAModel.from_lora_tensors``, ``vllm.lora.peft_helper.PEFTHelper``,
``model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)``, and on CPU the
punica wrapper and LoRA layer attributes vllm_population.py lists.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import torch

from ..noise import NoiseSpec
from .vllm_population import install as install_population_products
from .weight_transport import TensorBytes, TensorSlot, decode, from_shared_memory, wire_dtype

_PREFIX = "base_model.model."


def _module_of(hf_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return hf_name[: -len(".weight")] if hf_name.endswith(".weight") else hf_name


@contextmanager
def _quiet(*logger_names: str, level: int = logging.ERROR):
    """Silence per-layer "weights not loaded" warnings of a partial in-place reload."""
    loggers = [logging.getLogger(n) for n in logger_names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


class EggrollWorkerExtension:
    """Mixed into vLLM's worker class; every public method is a collective_rpc target."""

    # -- helpers -------------------------------------------------------------------------

    def _eggroll_lora_manager(self):
        runner = self.model_runner
        manager = getattr(runner, "lora_manager", None)
        if manager is None:
            raise RuntimeError("the vLLM engine was started without enable_lora=True")
        return manager._adapter_manager

    def _eggroll_build(
        self,
        lora_id: int,
        noise: NoiseSpec,
        member: int,
        targets: list[tuple[str, tuple[int, int]]],
        factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
    ):
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.peft_helper import PEFTHelper

        adapter_manager = self._eggroll_lora_manager()
        lora_config = self.model_runner.lora_config
        scale = noise.member_scale(member)
        pair = member // 2
        tensors: dict[str, torch.Tensor] = {}
        for name, _shape in targets:
            a, b = factors[pair, name]
            module = _PREFIX + _module_of(name)
            tensors[module + ".lora_A.weight"] = b.T.contiguous()  # r × in
            tensors[module + ".lora_B.weight"] = a * scale  # out × r
        peft_helper = PEFTHelper(
            r=noise.rank,
            lora_alpha=noise.rank,  # scaling = alpha / r = 1
            target_modules=sorted({_module_of(n).rsplit(".", 1)[-1] for n, _ in targets}),
        )
        model = adapter_manager.model
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        if mapper is not None:
            mapper = mapper.get_rename_mapper()
        lora = LoRAModel.from_lora_tensors(
            lora_model_id=lora_id,
            tensors=tensors,
            peft_helper=peft_helper,
            device="cpu",
            dtype=lora_config.lora_dtype,
            model_vocab_size=self.model_runner.model_config.get_vocab_size(),
            weights_mapper=mapper,
            skip_prefixes=getattr(model, "lora_skip_prefixes", None),
        )
        return lora

    # -- collective_rpc targets ------------------------------------------------------------

    def eggroll_check_targets(self, targets: list[tuple[str, tuple[int, int]]], rank: int) -> list[str]:
        """Why targets cannot be perturbed through LoRA (empty: all fine). Registers nothing."""
        from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA

        adapter_manager = self._eggroll_lora_manager()
        try:
            noise = NoiseSpec(seed=0, step=0, sigma=1.0, rank=rank)
            lora = self._eggroll_build(2**31 - 2, noise, 0, targets, noise.per_pair([0], dict(targets)))
            # Pack q/k/v and gate/up like add_adapter would, without registering the adapter.
            adapter_manager._create_merged_loras_inplace(lora)
        except Exception as exc:  # e.g. a name vLLM's LoRA loader does not understand
            return [f"{type(exc).__name__}: {exc}"]
        problems = []
        for module in sorted(lora.loras):
            layer = adapter_manager.modules.get(module)
            if layer is None:
                problems.append(f"{module} (no LoRA-capable vLLM module of that name)")
            elif not isinstance(layer, BaseLinearLayerWithLoRA):
                problems.append(f"{module} (a {type(layer).__name__}, not a linear layer)")
        return problems

    def eggroll_add_members(
        self,
        noise_fields: dict,
        members: list[int],
        lora_ids: list[int],
        targets: list[tuple[str, tuple[int, int]]],
    ) -> float:
        """Register member `members[i]` of the step `noise_fields` describes (a NoiseSpec as plain
        fields: vLLM's RPC carries plain data) as adapter `lora_ids[i]`; returns seconds."""
        noise = NoiseSpec(**noise_fields)
        t0 = time.perf_counter()
        adapter_manager = self._eggroll_lora_manager()
        if len(adapter_manager.list_adapters()) + len(members) > adapter_manager.capacity:
            raise RuntimeError(
                f"{len(members)} members do not fit in vLLM's LoRA cache "
                f"(max_cpu_loras={adapter_manager.capacity}, "
                f"{len(adapter_manager.list_adapters())} registered)"
            )
        factors = noise.per_pair(sorted({m // 2 for m in members}), dict(targets))
        for member, lora_id in zip(members, lora_ids):
            lora = self._eggroll_build(lora_id, noise, member, targets, factors)
            adapter_manager.add_adapter(lora)
        return time.perf_counter() - t0

    def eggroll_population_products(self, enabled: bool) -> bool:
        """LoRA linear layers through vllm_population.py's dense products (True) or vLLM's own
        kernels (False); returns whether the products are in place (only on vLLM's CPU wrapper)."""
        return install_population_products(self._eggroll_lora_manager(), enabled) and enabled

    def eggroll_remove(self, lora_ids: list[int]) -> None:
        adapter_manager = self._eggroll_lora_manager()
        for lora_id in lora_ids:
            adapter_manager.remove_adapter(lora_id)

    def eggroll_list(self) -> list[int]:
        return sorted(self._eggroll_lora_manager().list_adapters())

    def eggroll_worker_info(self) -> dict:
        """Where the worker runs and in which dtype it keeps weights (how to send them)."""
        return {"pid": os.getpid(), "dtype": wire_dtype(self.model_runner.model_config.dtype)}

    def eggroll_load_weights_local(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Replace base weights in place (checkpoint names, complete fused groups).
        Reached only from the worker's own process (weight_transport.py): `weights` are the
        sender's tensors, already in the engine's dtype.

        ``reload_weights`` re-runs vLLM's weight processing (the CPU backend repacks linear
        weights for oneDNN), copying from `weights`, and drops every registered LoRA adapter.
        """
        self._eggroll_reload(weights)

    def eggroll_load_weights(self, items: list[TensorBytes]) -> None:
        """eggroll_load_weights_local for tensors sent as bytes."""
        self._eggroll_reload([decode(item) for item in items])

    def eggroll_load_weights_shm(self, block_name: str, slots: list[TensorSlot]) -> None:
        """eggroll_load_weights_local for tensors in a shared-memory block that the sender owns
        (weight_transport.py); the reload reads views of it and copies what it keeps."""
        with from_shared_memory(block_name, slots) as weights:
            self._eggroll_reload(weights)

    def _eggroll_reload(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        dtype = self.model_runner.model_config.dtype
        with _quiet(
            "vllm.model_executor.model_loader.reload.inplace",
            "vllm.model_executor.model_loader.reload.layerwise",
        ):
            self.model_runner.reload_weights(
                weights_iterator=((name, t.to(dtype)) for name, t in weights), is_checkpoint_format=True
            )
