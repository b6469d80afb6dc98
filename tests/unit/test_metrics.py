"""pass@k, majority vote and confidence intervals against hand-computed values."""

from __future__ import annotations

import math
import random
from math import comb

import pytest

from eggroll_rl.metrics import majority_vote, mean_ci, paired_difference_ci, pass_at_k


def test_pass_at_k_known_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples: some pick is right


def test_pass_at_k_matches_the_binomial_formula_and_is_stable():
    for n, c, k in [(20, 3, 5), (100, 17, 10), (50, 1, 50), (7, 6, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    value = pass_at_k(10_000, 3, 100)  # comb() here has hundreds of digits; the product does not
    assert 0 < value < 1 and math.isfinite(value)
    assert pass_at_k(10_000, 3, 100) == pytest.approx(1 - comb(9997, 100) / comb(10_000, 100))


def test_pass_at_k_rejects_impossible_inputs():
    for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None, "3", "5", None, None]) == "3"  # tie 3 vs 4: first seen
    assert majority_vote(["4", "3", "3"]) == "3"
    assert majority_vote([None, "7"]) == "7"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_mean_ci_wilson_for_binary():
    mean, low, high = mean_ci([1] * 8 + [0] * 2)
    assert mean == pytest.approx(0.8)
    # Wilson 95% for 8/10: (0.4902, 0.9433)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    mean, low, high = mean_ci([0, 0, 0, 0])
    assert mean == 0 and low == 0 and 0 < high < 1  # never a zero-width interval at the edge
    mean, low, high = mean_ci([1.0] * 30)
    assert mean == 1 and high == 1 and low < 1


def test_mean_ci_normal_for_continuous_values():
    values = [0.2, 0.4, 0.6, 0.8]
    mean, low, high = mean_ci(values)
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.5)
    assert high - mean == pytest.approx(1.959964 * sd / 2, rel=1e-5)
    assert mean - low == pytest.approx(high - mean)
    narrow = mean_ci(values, confidence=0.5)
    assert narrow[2] - narrow[1] < high - low
    nan = mean_ci([])
    assert all(math.isnan(x) for x in nan)
    assert mean_ci([0.5, None, float("nan"), 0.7])[0] == pytest.approx(0.6)


def test_mean_ci_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    hits = 0
    for _ in range(400):
        _, low, high = mean_ci([1.0 if rng.random() < 0.3 else 0.0 for _ in range(50)])
        hits += low <= 0.3 <= high
    assert 0.90 <= hits / 400 <= 0.99


def test_paired_difference_ci():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 0, 1]
    mean, low, high = paired_difference_ci(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    sd = math.sqrt(sum((d - 0.375) ** 2 for d in diffs) / 7)
    assert mean == pytest.approx(0.375)
    assert high - mean == pytest.approx(1.959964 * sd / math.sqrt(8), rel=1e-5)
    assert low < mean < high
    # identical models: zero difference, zero width
    assert paired_difference_ci(a, a) == (0.0, 0.0, 0.0)
    # pairing matters: a constant per-item shift is certain even if items vary a lot
    m, lo, hi = paired_difference_ci([10, 20, 30, 40], [9, 19, 29, 39])
    assert (m, lo, hi) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        paired_difference_ci([1, 0], [1])
