"""Philox4x32-10 normals in plain torch operations: the same bits on a CPU and on a GPU.

Philox (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) maps a 128-bit
counter and a 64-bit key to 128 random bits through ten rounds of 32-bit multiplies and XORs. It
keeps no state, so every slice of every stream is drawn independently, all at once, on any device.

Torch has no unsigned 32-bit multiply-high, so words live in int64 tensors and each 32×32-bit
product is split into two 32×16-bit products that never overflow. Normals come from Box-Muller,
with log, sin and cos written as polynomials in +, −, × and ÷ (and √): IEEE 754 rounds each of
those operations identically everywhere, while library log/sin/cos differ in the last bit between
CPU and GPU math libraries. No fused or compiled kernels here, for the same reason.
"""

from __future__ import annotations

import math

import torch

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments (Weyl sequence)
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a·m, for int64 `a` holding values < 2³² and a constant m < 2³²."""
    low_part = a * (m & 0xFFFF)  # < 2⁴⁸
    high_part = a * (m >> 16)  # < 2⁴⁸; a·m = high_part·2¹⁶ + low_part
    t = low_part + ((high_part & 0xFFFF) << 16)  # < 2⁴⁹
    return (high_part >> 16) + (t >> 32), t & MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of four counter words and two key words (int64 tensors of 32-bit values,
    broadcast together): four words of 32 random bits each."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for i in range(ROUNDS):
        if i:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


# Taylor coefficients, highest power first (Horner): |error| < 1e-9 on the ranges used below,
# below float32's rounding.
_LOG_SERIES = [1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3, 1.0]  # log(m) = 2s·Σ s^2k/(2k+1), s = (m−1)/(m+1)
_SIN_SERIES = [(-1) ** k / math.factorial(2 * k + 1) for k in range(7, -1, -1)]  # sin θ = θ·Σ (−θ²)^k/(2k+1)!
_COS_SERIES = [(-1) ** k / math.factorial(2 * k) for k in range(8, -1, -1)]  # cos θ = Σ (−θ²)^k/(2k)!
_LN2 = math.log(2)


def _horner(coefficients: list[float], x: torch.Tensor) -> torch.Tensor:
    acc = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        acc = acc * x + c  # two roundings (no fused multiply-add): the same on every device
    return acc


def _log_unit(u: torch.Tensor) -> torch.Tensor:
    """ln u for float32 u in (0, 1]: u = m·2^e with m in [√½, √2), ln u = e·ln 2 + ln m."""
    m, e = torch.frexp(u)  # m in [0.5, 1)
    low = m < math.sqrt(0.5)
    m = torch.where(low, m * 2, m)
    e = torch.where(low, e - 1, e)
    s = (m - 1) / (m + 1)  # |s| < 0.172
    return e.to(torch.float32) * _LN2 + 2 * s * _horner(_LOG_SERIES, s * s)


def _box_muller(w_radius: torch.Tensor, w_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals from two 32-bit words: radius √(−2 ln u), u in (0, 1) from 23 bits;
    angle from the other word's top 24 bits: its top 2 bits pick the quadrant, the next 22 bits
    the angle θ in [0, π/2) inside it (exact integer arithmetic: no range reduction error)."""
    u = ((w_radius >> 9) * 2 + 1).to(torch.float32) * 2.0**-24  # odd multiples of 2⁻²⁴: never 0
    radius = torch.sqrt(_log_unit(u) * -2.0)
    quadrant = w_angle >> 30
    theta = ((w_angle >> 8) & 0x3FFFFF).to(torch.float32) * (math.pi / 2 * 2.0**-22)
    t2 = theta * theta
    sin, cos = theta * _horner(_SIN_SERIES, t2), _horner(_COS_SERIES, t2)
    # Rotate (cos, sin) by quadrant·π/2.
    x = torch.where(quadrant == 0, cos, torch.where(quadrant == 1, -sin, torch.where(quadrant == 2, -cos, sin)))
    y = torch.where(quadrant == 0, sin, torch.where(quadrant == 1, cos, torch.where(quadrant == 2, -sin, -cos)))
    return radius * x, radius * y


def philox_normals(keys: torch.Tensor, streams: torch.Tensor, count: int) -> torch.Tensor:
    """Standard normals, float32, shape (len(keys), len(streams), count): row [i, j] is the first
    `count` normals of stream streams[j] under key keys[i] (two 32-bit words, int64). Counter
    block b of a stream is (b, stream, 0, 0) and gives four normals. Drawn on the keys' device."""
    device = keys.device
    blocks = (count + 3) // 4
    k0, k1 = keys[:, 0].view(-1, 1, 1), keys[:, 1].view(-1, 1, 1)
    c0 = torch.arange(blocks, device=device, dtype=torch.int64).view(1, 1, -1)
    c1 = streams.to(device, torch.int64).view(1, -1, 1)
    zero = torch.zeros((), device=device, dtype=torch.int64)
    w0, w1, w2, w3 = philox4x32((c0, c1, zero, zero), (k0, k1))
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    out = torch.stack((z0, z1, z2, z3), dim=-1).flatten(-2)
    return out[..., :count]
