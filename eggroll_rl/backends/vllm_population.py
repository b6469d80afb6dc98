"""Population LoRA products for vLLM's CPU backend: every row's rank-r term as dense products.

vLLM's CPU punica wrapper (``PunicaWrapperCPU``, torch ops ``sgmv/bgmv_shrink/expand``) applies
multi-LoRA per slice of a fused layer by gathering every token's adapter factors into a
(tokens × rank × in) and a (tokens × out × rank) tensor, casting them and the activations to
fp32 and back, and running an einsum on each: about 40 torch ops per layer, most of them copies,
which dominated the perturbed generation when profiled (docs/benchmarks.md).

Here the same sum is three dense products per layer, on the slot tensors vLLM already keeps
(L LoRA slots = max_loras, rank r = max_lora_rank, S slices: q/k/v, gate/up or one):

    Z = (x · Aᵀ) ⊙ M      A = [A_1; …; A_S] (S·L·r × in): every slot of every slice in one GEMM;
                          M (tokens × S·L·r): 1 in the columns of the token's slot, else 0
    y += Z · B            B (S·L·r × out): block-diagonal, block s = slice s's B of every slot

Only the slots some token of the batch uses enter A, B and M (K of the L; a batch holds a few
members' rows), so the GEMMs do K times the work of a per-token product (and B's zero blocks S
times more) but run as three calls instead of ~40; M and the K slots' row indices are found once
per forward pass (per token-to-slot mapping), not per layer. What remains is fixed cost: oneDNN
runs GEMMs this small far below its large-GEMM speed, and adding into y is one more pass over the
layer's output. (What each choice gained, measured: docs/benchmarks.md.)

:func:`install` puts it in place inside the worker: every LoRA linear layer's ``lora_a_stacked``
and ``lora_b_stacked`` become views of the two matrices A and B (``_Stacked.mat``) that the
GEMMs read (all of them in place, or the batch's slots' rows gathered), and the CPU punica
wrapper's ``add_lora_linear`` uses them. vLLM still owns the slots (``set_lora``/``reset_lora``
write through the views, also when a population larger than max_loras swaps adapters), the
token-to-slot mapping (``update_metadata``, ``token_lora_indices``, ``no_lora``) and everything
else. Layers it does not recognise keep vLLM's own path, and so does everything off CPU (vLLM's
GPU kernels gather per token efficiently).

vLLM internals used (0.32, see vllm_engine.SUPPORTED_VLLM): ``PunicaWrapperCPU``,
``LoRAModelManager.punica_wrapper_mapping`` and ``.modules``, ``BaseLinearLayerWithLoRA``'s
``lora_a_stacked`` (S × (slots, 1, r, in)) and ``lora_b_stacked`` (S × (slots, 1, out_s, r)).
"""

from __future__ import annotations

import types

import torch


class _Stacked(tuple):
    """A layer's lora_a_stacked / lora_b_stacked: one (slots, 1, ·, ·) view per slice, plus
    `mat`, the one 2-D matrix all those views share storage with."""

    mat: torch.Tensor


def _restack_a(old: tuple[torch.Tensor, ...]) -> _Stacked:
    """Slices' A (slots, 1, r, in) as views of one (S·slots·r, in) matrix."""
    slots, _, rank, n_in = old[0].shape
    flat = torch.zeros(len(old) * slots * rank, n_in, dtype=old[0].dtype, device=old[0].device)
    views = flat.view(len(old), slots, 1, rank, n_in)
    stacked = _Stacked(views[s] for s in range(len(old)))
    for new, prev in zip(stacked, old):
        new.copy_(prev)
    stacked.mat = flat
    return stacked


def _restack_b(old: tuple[torch.Tensor, ...]) -> _Stacked:
    """Slices' B (slots, 1, out_s, r) as transposed views of the diagonal blocks of one
    (S·slots·r, out) block-diagonal matrix: row block s times column block s is slice s."""
    slots, _, _, rank = old[0].shape
    sizes = [prev.shape[2] for prev in old]
    flat = torch.zeros(len(old) * slots * rank, sum(sizes), dtype=old[0].dtype, device=old[0].device)
    views, offset = [], 0
    for s, (prev, size) in enumerate(zip(old, sizes)):
        block = flat[s * slots * rank : (s + 1) * slots * rank, offset : offset + size]
        view = block.view(slots, rank, size).unsqueeze(1).transpose(2, 3)
        view.copy_(prev)
        views.append(view)
        offset += size
    stacked = _Stacked(views)
    stacked.mat = flat
    return stacked


def _slot_columns(wrapper, dtype: torch.dtype, slices: int, slots: int, rank: int):
    """(mask, cols) for the columns of H = x·Aᵀ that belong to a slot some token uses: `cols`
    their row indices in A and B (None: all of them), `mask` (tokens × those columns) 1 where
    the column is the token's slot, else 0. None when no token has an adapter. Cached until the
    wrapper's next mapping update.

    A batch holds a few members' rows (the trainer sends them member-major, and at most
    max_num_seqs run at once: 256 rows of 32 prompts each span about 8 of the quickstart's 64
    members, a few more while finished rows are replaced); products over only their slots do
    that fraction of the LoRA work, for one small row gather per layer."""
    key = (dtype, slices, slots, rank)
    cache = wrapper._eggroll_masks
    if key not in cache:
        idx = wrapper.token_lora_indices
        rows = (idx >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            cache[key] = None
        else:
            active, position = torch.unique(idx[rows], return_inverse=True)
            mask = torch.zeros(idx.shape[0], slices, active.numel(), rank, dtype=dtype, device=idx.device)
            mask[rows, :, position] = 1
            mask = mask.view(idx.shape[0], -1)
            cols = None
            if active.numel() < slots:  # A's rows are (slice, slot, rank)-major
                slot_rows = torch.arange(slices, device=idx.device)[:, None] * slots + active[None, :]
                cols = (slot_rows[..., None] * rank + torch.arange(rank, device=idx.device)).reshape(-1)
            cache[key] = (mask, cols)
    return cache[key]


def _add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs):
    """PunicaWrapperBase.add_lora_linear: y[:, slice s] += x·A_sᵀ·B_sᵀ·scale for each token's slot."""
    ours = isinstance(lora_a_stacked, _Stacked) and isinstance(lora_b_stacked, _Stacked)
    if not (ours and self._eggroll_enabled):
        return self._eggroll_vllm_add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
    if self.no_lora:
        return y
    a, b = lora_a_stacked.mat, lora_b_stacked.mat
    slots, _, rank, _ = lora_a_stacked[0].shape
    columns = _slot_columns(self, a.dtype, len(output_slices), slots, rank)
    if columns is None:
        return y
    mask, cols = columns
    x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    if x2.shape[0] != mask.shape[0]:  # not one row per mapped token: leave it to vLLM
        return self._eggroll_vllm_add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
    if cols is not None:
        a, b = a.index_select(0, cols), b.index_select(0, cols)
    z = torch.mm(x2.to(a.dtype), a.T).mul_(mask)  # H ⊙ M
    if scale != 1.0:
        z.mul_(scale)
    if b.dtype == y2.dtype:
        y2.addmm_(z, b)
    else:
        y2.add_(torch.mm(z, b).to(y2.dtype))
    return y


def install(adapter_manager, enabled: bool = True) -> bool:
    """Route the LoRA linear layers of `adapter_manager` (vLLM's LoRAModelManager) through the
    population products (`enabled`) or vLLM's own kernels; False (nothing changed) when its
    wrapper is not vLLM's CPU one. Idempotent; registered adapters' slots are kept."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    wrappers = {id(w): w for w in adapter_manager.punica_wrapper_mapping.values()}
    if not wrappers or any(type(w) is not PunicaWrapperCPU for w in wrappers.values()):
        return False
    for wrapper in wrappers.values():
        wrapper._eggroll_enabled = enabled
        if hasattr(wrapper, "_eggroll_vllm_add_lora_linear"):
            continue
        wrapper._eggroll_masks = {}
        update = wrapper.update_metadata

        def update_metadata(*args, _update=update, _wrapper=wrapper, **kwargs):
            _update(*args, **kwargs)
            _wrapper._eggroll_masks = {}

        wrapper.update_metadata = update_metadata
        wrapper._eggroll_vllm_add_lora_linear = wrapper.add_lora_linear
        wrapper.add_lora_linear = types.MethodType(_add_lora_linear, wrapper)
    for module in adapter_manager.modules.values():
        if isinstance(module, BaseLinearLayerWithLoRA) and not isinstance(module.lora_a_stacked, _Stacked):
            module.lora_a_stacked = _restack_a(module.lora_a_stacked)
            module.lora_b_stacked = _restack_b(module.lora_b_stacked)
    return True
