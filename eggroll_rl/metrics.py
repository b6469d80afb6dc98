"""Evaluation statistics: pass@k, majority vote, confidence intervals, paired comparisons.

All pure Python (no numpy/scipy), exact enough for reporting:

* `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  computed as a running product so large n never overflows;
* `majority_vote(answers)`: the most common extracted answer (None ignored, ties to the first seen);
* `mean_ci(values)`: mean and a confidence interval, Wilson's for 0/1 values, else normal;
* `paired_difference_ci(a, b)`: mean of per-item differences a_i - b_i with a normal-approximation
  interval, for comparing two models on the same items.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import NormalDist
from typing import Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not (0 <= c <= n) or k < 1 or n < 1:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, n >= 1 and k >= 1; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} exceeds the n={n} samples drawn")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """Most common non-None answer; ties go to the one that appeared first; None if all are None."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    for a in answers:
        if a is not None and counts[a] == best:
            return a
    return None  # unreachable


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: got {confidence}; expected a number in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high). Wilson score interval when every value is 0 or 1, else mean ± z·s/√n.

    None/NaN values are dropped; an empty list gives (nan, nan, nan).
    """
    z = _z(confidence)
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    if all(v in (0.0, 1.0) for v in vals):
        p = sum(vals) / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return (p, max(0.0, centre - half), min(1.0, centre + half))
    mean, sd = _mean_sd(vals)
    half = z * sd / math.sqrt(n)
    return (mean, mean - half, mean + half)


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean of a_i - b_i, low, high): normal approximation on the paired per-item differences."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference_ci: {len(a)} scores vs {len(b)}; pair the same items")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))
    ]
    if not pairs:
        return (math.nan, math.nan, math.nan)
    diffs = [x - y for x, y in pairs]
    mean, sd = _mean_sd(diffs)
    half = _z(confidence) * sd / math.sqrt(len(diffs))
    return (mean, mean - half, mean + half)
