"""Counter-based low-rank noise: regenerated on demand from indices, never stored.

Member pair k of step t perturbs a weight matrix W (out×in) named `name` by

    E = s · σ/√r · A·Bᵀ,   A ~ N(0, 1)^(out×r),  B ~ N(0, 1)^(in×r),  s = +1 (member 2k) / −1 (2k+1)

A and B are a pure function of (seed, step, k, name), drawn by a counter-based generator, so any
process, on any machine, regenerates the same factors: a step's members are just index ranges,
and only seeds and fitness scores ever need to cross a network. Mirrored ("antithetic") pairs
cancel the even terms of the Taylor expansion of the reward and halve the noise to draw.

Two generators (a run records which one it used, `es.noise`; both work on every device):

* ``philox-torch``: Philox4x32-10 in torch integer operations (philox.py), keyed by a hash of
  (seed, step, name), one stream per pair. All pairs of all same-shaped matrices come out of one
  call on the engine's device, with the same bits on a CPU and a GPU. The default on a GPU.
* ``philox-numpy``: numpy's Philox4x64, one generator per (seed, step, pair, name), drawn on the
  CPU. Faster there; the default on a CPU, and what every run before the choice existed used.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .philox import philox_normals

GENERATORS = ("philox-numpy", "philox-torch")


def resolve_generator(setting: str, device: str | torch.device) -> str:
    """The generator `es.noise` names; "auto" is philox-torch for an engine on a GPU, else philox-numpy."""
    if setting != "auto":
        return setting
    return "philox-torch" if torch.device(device).type == "cuda" else "philox-numpy"


def _key(seed: int, step: int, pair: int, name: str) -> int:
    """A 128-bit Philox key: the hash of (seed, step, pair, name); distinct inputs never alias."""
    digest = hashlib.blake2b(
        struct.pack("<qqq", seed, step, pair) + name.encode(), digest_size=16
    ).digest()
    return int.from_bytes(digest, "little")


def low_rank_factors(
    seed: int, step: int, pair: int, name: str, shape: tuple[int, int], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """philox-numpy's factors (A: out×r, B: in×r) in fp32 on CPU, of pair `pair` for `name`."""
    out_features, in_features = shape
    gen = np.random.Generator(np.random.Philox(key=_key(seed, step, pair, name)))
    z = gen.standard_normal((out_features + in_features, rank), dtype=np.float32)
    z = torch.from_numpy(z)
    return z[:out_features], z[out_features:]


def _torch_key(seed: int, step: int, name: str) -> tuple[int, int]:
    """philox-torch's 64-bit key of one matrix in one step, as two 32-bit words."""
    digest = hashlib.blake2b(b"philox-torch" + struct.pack("<qq", seed, step) + name.encode(), digest_size=8).digest()
    return struct.unpack("<II", digest)


def torch_factors(
    seed: int, step: int, pairs: Sequence[int], names: Sequence[str], shape: tuple[int, int], rank: int,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """philox-torch's factors of every pair in `pairs` for matrices `names` of one shape, in one
    draw on `device`: A (names, pairs, out, r), B (names, pairs, in, r), fp32. Pair k of a matrix
    is stream k of the matrix's key; its normals fill (out + in) × r row-major, A's rows first."""
    keys = torch.tensor([_torch_key(seed, step, n) for n in names], dtype=torch.int64, device=device)
    streams = torch.tensor(list(pairs), dtype=torch.int64, device=device)
    out_features, in_features = shape
    z = philox_normals(keys, streams, (out_features + in_features) * rank)
    z = z.view(len(names), len(streams), out_features + in_features, rank)
    return z[:, :, :out_features], z[:, :, out_features:]


# Normals per philox-torch call: bounds its int64 temporaries (about 2 bytes each per normal, a
# few alive at once), sized for the CPU's cache and a GPU's memory.
_DRAW_BUDGET = {"cpu": 1 << 21, "cuda": 1 << 27}

# CPU factors of the most recent (seed, step), up to a memory budget: a step's rollout, its update
# and (on CPU, where vLLM's worker runs in this process) the adapters it builds all ask for the
# same factors.
_CACHE_BUDGET_BYTES = 512 << 20
_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_cache_step: tuple[int, int] | None = None
_cache_bytes = 0


def clear_cache() -> None:
    """Forget every cached factor (benchmarks of a cold draw)."""
    global _cache_step, _cache_bytes
    _cache.clear()
    _cache_step, _cache_bytes = None, 0


def _cache_get(seed: int, step: int, key: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
    global _cache_step, _cache_bytes
    if _cache_step != (seed, step):
        _cache.clear()
        _cache_step, _cache_bytes = (seed, step), 0
    return _cache.get(key)


def _cache_put(key: tuple, factors: tuple[torch.Tensor, torch.Tensor]) -> None:
    global _cache_bytes
    size = (factors[0].numel() + factors[1].numel()) * 4
    if _cache_bytes + size <= _CACHE_BUDGET_BYTES:
        _cache[key] = factors
        _cache_bytes += size


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
    generator: str = "philox-numpy"

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"noise generator {self.generator!r}: expected one of {', '.join(GENERATORS)}")

    @property
    def scale(self) -> float:
        """σ/√r: the factor in front of A·Bᵀ."""
        return self.sigma / math.sqrt(self.rank)

    def member_scale(self, member: int) -> float:
        """±σ/√r: member 2k perturbs by +scale·A·Bᵀ, member 2k+1 by −scale·A·Bᵀ."""
        return member_sign(member) * self.scale

    def factors(self, pair: int, name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of one pair on the CPU (shared, cached tensors: callers must not modify them)."""
        return self.per_pair([pair], {name: shape})[pair, name]

    def per_pair(
        self, pairs: Sequence[int], shapes: dict[str, tuple[int, int]]
    ) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """{(pair, name): (A, B)} on the CPU for every pair and matrix (each member's own tensors,
        as vLLM's adapters take them); shared, cached tensors: callers must not modify them."""
        if self.generator == "philox-numpy":
            return {(k, name): self._numpy_factors(k, name, tuple(shape)) for name, shape in shapes.items() for k in pairs}
        return {(k, name): (a[i], b[i]) for name, a, b in self.draw(pairs, shapes) for i, k in enumerate(pairs)}

    def draw(
        self, pairs: Sequence[int], shapes: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, A: (P, out, r), B: (P, in, r)) of every matrix in `shapes`, the P pairs stacked,
        fp32 on `device`; callers must not modify them. philox-torch draws all pairs of as many
        same-shaped matrices as its budget allows at once (the order follows those groups); on
        the CPU, factors drawn earlier in the step come from the cache."""
        device = torch.device(device)
        pairs = list(pairs)
        if self.generator == "philox-numpy":
            for name, shape in shapes.items():
                yield name, *self._stack([self._numpy_factors(k, name, tuple(shape)) for k in pairs], device)
            return
        if device.type == "cpu":
            missing = {}
            for name, shape in shapes.items():
                cached = [_cache_get(self.seed, self.step, (self.generator, k, name, tuple(shape), self.rank)) for k in pairs]
                if any(c is None for c in cached):
                    missing[name] = shape
                else:
                    yield name, *self._stack(cached, device)
            shapes = missing
        yield from self._draw_torch(pairs, shapes, device)

    def _numpy_factors(self, pair: int, name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.generator, pair, name, shape, self.rank)
        factors = _cache_get(self.seed, self.step, key)
        if factors is None:
            factors = low_rank_factors(self.seed, self.step, pair, name, shape, self.rank)
            _cache_put(key, factors)
        return factors

    def _draw_torch(self, pairs: list[int], shapes: dict[str, tuple[int, int]], device: torch.device):
        by_shape: dict[tuple[int, int], list[str]] = {}
        for name, shape in shapes.items():
            by_shape.setdefault(tuple(shape), []).append(name)
        budget = _DRAW_BUDGET.get(device.type, _DRAW_BUDGET["cuda"])
        for shape, names in by_shape.items():
            per_matrix = max(1, len(pairs) * sum(shape) * self.rank)
            group = max(1, budget // per_matrix)
            for i in range(0, len(names), group):
                batch = names[i : i + group]
                a, b = torch_factors(self.seed, self.step, pairs, batch, shape, self.rank, device)
                for j, name in enumerate(batch):
                    if device.type == "cpu":
                        for p, k in enumerate(pairs):
                            _cache_put((self.generator, k, name, shape, self.rank), (a[j, p], b[j, p]))
                    yield name, a[j], b[j]

    @staticmethod
    def _stack(factors: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([a for a, _ in factors]).to(device), torch.stack([b for _, b in factors]).to(device))

    def perturbation(self, member: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
        """The dense E of one member (tests and the naive baseline only: out×in memory)."""
        a, b = self.factors(member // 2, name, shape)
        return self.member_scale(member) * (a @ b.T)
