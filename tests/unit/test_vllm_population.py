"""vllm_population.py's products against the per-token sum they replace (no engine needed)."""

from __future__ import annotations

import types

import pytest
import torch

from eggroll_rl.backends.vllm_population import _add_lora_linear, _restack_a, _restack_b

SLOTS, RANK, N_IN, SLICES = 5, 2, 12, (7, 3, 3)  # a fused q/k/v: three slices of one output


def wrapper(token_slots: list[int]):
    """The attributes of vLLM's CPU punica wrapper that _add_lora_linear reads, with our routing
    installed; vLLM's own path must not be taken."""
    def vllm_path(*args, **kwargs):
        raise AssertionError("fell back to vLLM's kernels")

    return types.SimpleNamespace(
        _eggroll_enabled=True, _eggroll_masks={}, _eggroll_vllm_add_lora_linear=vllm_path,
        no_lora=all(s < 0 for s in token_slots), token_lora_indices=torch.tensor(token_slots))


@pytest.mark.parametrize("token_slots", [
    [3, 3, 1, -1, 1, 3],  # two of five slots in the batch (a few members' rows), one row without an adapter
    [0, 1, 2, 3, 4, 4, 0],  # every slot
    [-1, -1],  # no adapter at all
])
def test_products_equal_each_tokens_own_adapter(token_slots):
    gen = torch.Generator().manual_seed(0)
    a = tuple(torch.randn(SLOTS, 1, RANK, N_IN, generator=gen) for _ in SLICES)
    b = tuple(torch.randn(SLOTS, 1, out, RANK, generator=gen) for out in SLICES)
    x = torch.randn(len(token_slots), N_IN, generator=gen)
    y0 = torch.randn(len(token_slots), sum(SLICES), generator=gen)
    scale = 0.5

    expected = y0.clone()
    for t, slot in enumerate(token_slots):
        if slot < 0:
            continue
        offset = 0
        for s, out in enumerate(SLICES):
            expected[t, offset:offset + out] += scale * b[s][slot, 0] @ (a[s][slot, 0] @ x[t])
            offset += out

    y = y0.clone()
    _add_lora_linear(wrapper(token_slots), y, x, _restack_a(a), _restack_b(b), scale, SLICES)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
