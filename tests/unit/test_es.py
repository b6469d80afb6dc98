import math

import pytest
import torch

from eggroll_rl.config import ESConfig
from eggroll_rl.es import (
    EggrollES,
    gradient_estimate,
    schedule,
    shape_centered_rank,
    shape_normalize,
    shape_zscore,
    shape_raw,
)
from eggroll_rl.noise import NoiseSpec

SHAPE = (24, 16)


def quadratic_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g)
    target = torch.randn(SHAPE, generator=g)
    reward = lambda m: -((m - target) ** 2).sum()  # noqa: E731 - maximize
    true_grad = -2 * (w - target)
    return w, reward, true_grad


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def lowrank_estimate(n, rank, seed, sigma=0.1):
    w, reward, true_grad = quadratic_problem()
    noise = NoiseSpec(seed=seed, step=0, sigma=sigma, rank=rank)
    fitness = torch.tensor([float(reward(w + noise.perturbation(i, "w", SHAPE))) for i in range(n)])
    return gradient_estimate(noise, fitness, "w", SHAPE), true_grad


def fullrank_estimate(n, seed, sigma=0.1):
    w, reward, true_grad = quadratic_problem()
    g = torch.Generator().manual_seed(1000 + seed)
    eps = [torch.randn(SHAPE, generator=g) for _ in range(n // 2)]
    total = torch.zeros(SHAPE)
    for e in eps:  # mirrored pairs, as for the low-rank estimator
        total += (reward(w + sigma * e) - reward(w - sigma * e)) * e
    return total / (n * sigma), true_grad


def mean_cos(fn, seeds=6):
    return sum(cosine(*fn(s)) for s in range(seeds)) / seeds


def test_estimate_matches_dense_formula():
    noise = NoiseSpec(seed=5, step=2, sigma=0.03, rank=2)
    fitness = torch.randn(6, dtype=torch.float64)
    dense = sum(fitness[i].float() * noise.perturbation(i, "w", SHAPE) for i in range(6)) / (6 * noise.sigma)
    assert torch.allclose(gradient_estimate(noise, fitness, "w", SHAPE), dense, atol=1e-5)


def test_cosine_with_true_gradient_rises_with_population():
    cos = [mean_cos(lambda s, n=n: lowrank_estimate(n, rank=1, seed=s)) for n in (4, 32, 256)]
    assert cos[0] < cos[1] < cos[2], cos
    assert cos[2] > 0.35


def test_low_rank_approaches_full_rank_as_rank_grows():
    n = 64
    full = mean_cos(lambda s: fullrank_estimate(n, s))
    low = [mean_cos(lambda s, r=r: lowrank_estimate(n, rank=r, seed=s)) for r in (1, 4, 16)]
    gaps = [abs(full - c) for c in low]
    assert gaps[2] < gaps[0], (full, low)
    assert gaps[2] < 0.1, (full, low)


def test_sgd_step_moves_uphill():
    w, reward, _ = quadratic_problem()
    cfg = ESConfig(population=64, rank=1, sigma=0.05, lr=0.05)
    es = EggrollES(cfg, seed=0, total_steps=10)
    master = {"w": w.clone()}
    start = float(reward(master["w"]))
    for step in range(10):
        noise = es.ask(step)
        rewards = torch.tensor([[float(reward(master["w"] + noise.perturbation(i, "w", SHAPE)))] for i in range(64)])
        es.tell(step, es.shape(rewards), master)
    assert float(reward(master["w"])) > start


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_state_round_trips(optimizer):
    cfg = ESConfig(population=4, optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)
    es = EggrollES(cfg, seed=0, total_steps=5)
    master = {"w": torch.zeros(SHAPE)}
    es.tell(0, torch.tensor([1.0, -1.0, 0.5, 0.0]), master)
    other = EggrollES(cfg, seed=0, total_steps=5)
    other.load_state_tensors(es.state_tensors(), es.updates_applied)
    m1, m2 = {"w": master["w"].clone()}, {"w": master["w"].clone()}
    es.tell(1, torch.tensor([0.2, 0.1, -1.0, 1.0]), m1)
    other.tell(1, torch.tensor([0.2, 0.1, -1.0, 1.0]), m2)
    assert torch.equal(m1["w"], m2["w"]) and not torch.equal(m1["w"], master["w"])


def test_normalize_removes_prompt_mean_and_scales():
    rewards = torch.tensor([[1.0, 10.0], [0.0, 10.0], [1.0, 12.0], [0.0, 8.0]])
    f = shape_normalize(rewards)
    # prompt 2 is "easy" (all high): its mean is removed, only relative differences remain
    centered = rewards - rewards.mean(0)
    assert torch.allclose(f, (centered / centered.std(unbiased=False)).mean(1), atol=1e-6)
    assert abs(float(f.sum())) < 1e-6
    assert torch.allclose(shape_normalize(rewards * 100 + 3), f, atol=1e-5)  # scale-free


def test_zscore_standardizes_member_means_and_is_larger_than_normalize_by_about_sqrt_p():
    gen = torch.Generator().manual_seed(0)
    rewards = (torch.rand(32, 16, generator=gen) < 0.3).double()  # 0/1 correctness, N=32, P=16
    z = shape_zscore(rewards)
    means = rewards.mean(1)
    assert torch.allclose(z, (means - means.mean()) / means.std(unbiased=False), atol=1e-6)
    assert abs(float(z.mean())) < 1e-9 and abs(float(z.std(unbiased=False)) - 1) < 1e-6
    ratio = float(z.std(unbiased=False) / shape_normalize(rewards).std(unbiased=False))
    assert 2.5 < ratio < 6  # ≈ √16 = 4 for independent prompts


def test_centered_rank_and_raw():
    rewards = torch.tensor([[3.0], [1.0], [2.0], [2.0]])
    assert torch.allclose(shape_centered_rank(rewards), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert torch.equal(shape_raw(torch.tensor([[1.0, 3.0]])), torch.tensor([2.0]))


def test_schedules():
    assert schedule("constant", 1.0, 7, 10, 0.1) == 1.0
    assert schedule("linear", 1.0, 9, 10, 0.1) == pytest.approx(0.1)
    assert schedule("cosine", 1.0, 0, 10, 0.1) == pytest.approx(1.0)
    assert schedule("cosine", 1.0, 9, 10, 0.1) == pytest.approx(0.1)
    assert schedule("constant", 1.0, 0, 10, 0.1, warmup=4) == pytest.approx(0.25)


def test_official_lr_convention_scales_by_sigma_sqrt_n():
    cfg = ESConfig(population=16, sigma=0.01, lr=1.0, lr_convention="official")
    assert EggrollES(cfg, 0, 10).lr_at(0) == pytest.approx(0.01 * math.sqrt(16))
