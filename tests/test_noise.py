import subprocess
import sys

import torch

from eggroll_rl.noise import NoiseSpec, low_rank_factors, member_sign


def test_factors_are_a_pure_function_of_indices():
    a1, b1 = low_rank_factors(7, 3, 5, "layers.0.q_proj.weight", (16, 8), 2)
    a2, b2 = low_rank_factors(7, 3, 5, "layers.0.q_proj.weight", (16, 8), 2)
    assert a1.shape == (16, 2) and b1.shape == (8, 2)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)


def test_every_index_changes_the_factors():
    base = low_rank_factors(7, 3, 5, "w", (16, 8), 2)[0]
    for args in [(8, 3, 5, "w"), (7, 4, 5, "w"), (7, 3, 6, "w"), (7, 3, 5, "v")]:
        assert not torch.equal(base, low_rank_factors(*args, (16, 8), 2)[0])


def test_same_factors_in_a_fresh_process():
    a, b = low_rank_factors(11, 2, 9, "model.layers.1.mlp.up_proj.weight", (32, 16), 4)
    code = (
        "from eggroll_rl.noise import low_rank_factors;"
        "a, b = low_rank_factors(11, 2, 9, 'model.layers.1.mlp.up_proj.weight', (32, 16), 4);"
        "print(repr(a.sum().item()), repr(b.sum().item()), repr((a * a).sum().item()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [repr(a.sum().item()), repr(b.sum().item()), repr((a * a).sum().item())]


def test_mirrored_pairs_are_exact_negatives():
    spec = NoiseSpec(seed=0, step=1, sigma=0.01, rank=3)
    for k in range(3):
        plus = spec.perturbation(2 * k, "w", (12, 10))
        minus = spec.perturbation(2 * k + 1, "w", (12, 10))
        assert torch.equal(plus, -minus)
        assert torch.linalg.matrix_rank(plus) <= 3
    assert member_sign(0) == 1 and member_sign(1) == -1


def test_perturbation_scale_is_sigma_over_sqrt_rank():
    # E = σ/√r·A·Bᵀ with unit-Gaussian factors: E[E_ij²] = σ², whatever r.
    for rank in (1, 4, 16):
        spec = NoiseSpec(seed=3, step=0, sigma=0.5, rank=rank)
        sq = torch.stack([spec.perturbation(2 * k, "w", (64, 64)) for k in range(20)]).pow(2).mean()
        assert abs(sq.item() - 0.25) < 0.05, (rank, sq.item())
