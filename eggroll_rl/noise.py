"""Counter-based low-rank noise: regenerated on demand from indices, never stored.

Member pair k of step t perturbs a weight matrix W (out×in) named `name` by

    E = s · σ/√r · A·Bᵀ,   A ~ N(0, 1)^(out×r),  B ~ N(0, 1)^(in×r),  s = +1 (member 2k) / −1 (2k+1)

A and B are a pure function of (seed, step, k, name): a Philox (counter-based) generator keyed
by a hash of those four values. Any process, on any machine, regenerates the same factors, so a
step's members are just index ranges and only seeds and fitness scores ever need to cross a
network. Mirrored ("antithetic") pairs cancel the even terms of the Taylor expansion of the
reward and halve the noise to draw.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch


def _key(seed: int, step: int, pair: int, name: str) -> int:
    """A 128-bit Philox key: the hash of (seed, step, pair, name); distinct inputs never alias."""
    digest = hashlib.blake2b(
        struct.pack("<qqq", seed, step, pair) + name.encode(), digest_size=16
    ).digest()
    return int.from_bytes(digest, "little")


def low_rank_factors(
    seed: int, step: int, pair: int, name: str, shape: tuple[int, int], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A: out×r, B: in×r) in fp32 on CPU, of member pair `pair` for parameter `name`."""
    out_features, in_features = shape
    gen = np.random.Generator(np.random.Philox(key=_key(seed, step, pair, name)))
    z = gen.standard_normal((out_features + in_features, rank), dtype=np.float32)
    z = torch.from_numpy(z)
    return z[:out_features], z[out_features:]


# The factors of the most recent (seed, step), up to a memory budget: a step's rollout, its update
# and (on CPU, where vLLM's worker runs in this process) the adapters it builds all ask for the
# same factors, and drawing them costs ~0.1 s per pass for a 135M-parameter model.
_CACHE_BUDGET_BYTES = 512 << 20
_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_cache_step: tuple[int, int] | None = None
_cache_bytes = 0


def _cached_factors(seed: int, step: int, pair: int, name: str, shape: tuple[int, int], rank: int):
    global _cache_step, _cache_bytes
    if _cache_step != (seed, step):
        _cache.clear()
        _cache_step, _cache_bytes = (seed, step), 0
    key = (pair, name, shape, rank)
    hit = _cache.get(key)
    if hit is None:
        hit = low_rank_factors(seed, step, pair, name, shape, rank)
        size = (shape[0] + shape[1]) * rank * 4
        if _cache_bytes + size <= _CACHE_BUDGET_BYTES:
            _cache[key] = hit
            _cache_bytes += size
    return hit


def member_sign(member: int) -> int:
    """+1 for even members, −1 for odd: members 2k and 2k+1 share pair k's factors."""
    return 1 if member % 2 == 0 else -1


@dataclass(frozen=True)
class NoiseSpec:
    """Everything needed to regenerate one step's perturbations."""

    seed: int
    step: int
    sigma: float
    rank: int

    @property
    def scale(self) -> float:
        """σ/√r: the factor in front of A·Bᵀ."""
        return self.sigma / math.sqrt(self.rank)

    def member_scale(self, member: int) -> float:
        """±σ/√r: member 2k perturbs by +scale·A·Bᵀ, member 2k+1 by −scale·A·Bᵀ."""
        return member_sign(member) * self.scale

    def factors(self, pair: int, name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of pair `pair` (shared, cached tensors: callers must not modify them)."""
        return _cached_factors(self.seed, self.step, pair, name, tuple(shape), self.rank)

    def stacked_factors(
        self, pairs: range | list[int], name: str, shape: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A: (P, out, r), B: (P, in, r) for the given pairs."""
        fs = [self.factors(k, name, shape) for k in pairs]
        return torch.stack([a for a, _ in fs]), torch.stack([b for _, b in fs])

    def perturbation(self, member: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
        """The dense E of one member (tests and the naive baseline only: out×in memory)."""
        a, b = self.factors(member // 2, name, shape)
        return self.member_scale(member) * (a @ b.T)
