import subprocess
import sys

import pytest
import torch

from eggroll_rl.noise import NoiseSpec, low_rank_factors, member_sign, resolve_generator, torch_factors
from eggroll_rl.philox import philox4x32, philox_normals

from support import TEST_DEVICE

NAME = "model.layers.1.mlp.up_proj.weight"


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


def test_numpy_generator_draws_what_it_drew_before_torch_existed():
    """Runs made with philox-numpy (every run before es.noise) replay and resume exactly."""
    a, b = low_rank_factors(11, 2, 9, NAME, (32, 16), 4)
    assert a[0].tolist() == [1.394106149673462, -2.686509370803833, 0.5545931458473206, 1.1081068515777588]
    assert b[-1].tolist() == [0.643007218837738, -0.20804846286773682, -0.5895031094551086, -0.1951630711555481]
    assert float(a.double().sum()) == -14.40612084325403 and float(b.double().sum()) == 1.5311056338250637


def test_philox4x32_matches_the_random123_known_answers():
    words = lambda *v: tuple(torch.tensor([x], dtype=torch.int64, device=TEST_DEVICE) for x in v)  # noqa: E731
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32(words(*counter), words(*key))) == expected


def test_torch_generator_draws_the_pinned_factors():
    """philox-torch's stream is part of every run that used it: pinned here, on every device."""
    a, b = torch_factors(11, 2, [9], [NAME], (32, 16), 4, device=TEST_DEVICE)
    assert a[0, 0, 0].tolist() == [0.3868314027786255, 0.694885790348053, -0.7478083968162537, 0.769744873046875]
    assert b[0, 0, -1].tolist() == [0.31556999683380127, 0.03801390528678894, -0.08289524167776108, -0.1954205334186554]
    assert float(a.double().sum()) == -6.212665585801005 and float(b.double().sum()) == 6.9376302706077695


@pytest.mark.skipif(TEST_DEVICE == "cpu", reason="needs EGGROLL_TEST_DEVICE, e.g. cuda")
def test_torch_generator_gives_the_same_bits_on_cpu_and_the_test_device():
    keys = torch.randint(0, 2**32, (3, 2), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    streams = torch.arange(0, 200, 7)
    cpu = philox_normals(keys, streams, 4099)
    there = philox_normals(keys.to(TEST_DEVICE), streams.to(TEST_DEVICE), 4099).cpu()
    assert torch.equal(cpu, there)


def test_torch_generator_draws_any_pairs_and_matrices_alike():
    full_a, full_b = torch_factors(5, 1, range(6), ["x", "y"], (24, 10), 2, device=TEST_DEVICE)
    some_a, some_b = torch_factors(5, 1, [4, 1], ["y"], (24, 10), 2, device=TEST_DEVICE)
    assert torch.equal(some_a[0, 0], full_a[1, 4]) and torch.equal(some_b[0, 1], full_b[1, 1])
    assert not torch.equal(full_a[0, 0], full_a[1, 0]) and not torch.equal(full_a[0, 0], full_a[0, 1])
    other_step = torch_factors(5, 2, [0], ["x"], (24, 10), 2, device=TEST_DEVICE)[0]
    other_seed = torch_factors(6, 1, [0], ["x"], (24, 10), 2, device=TEST_DEVICE)[0]
    assert not torch.equal(other_step[0, 0], full_a[0, 0]) and not torch.equal(other_seed[0, 0], full_a[0, 0])


def test_torch_generator_normals_are_standard():
    keys = torch.tensor([[1, 2], [3, 4]], dtype=torch.int64, device=TEST_DEVICE)
    z = philox_normals(keys, torch.arange(50, device=TEST_DEVICE), 20000).double().flatten().cpu()
    n = z.numel()  # 2M draws: 5 standard errors of slack
    assert abs(z.mean()) < 5 / n**0.5 and abs(z.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs((z > 1).double().mean() - 0.158655) < 5 * (0.1335 / n) ** 0.5
    assert abs(((z - z.mean()) ** 4).mean() - 3) < 5 * (96 / n) ** 0.5


@pytest.mark.parametrize("generator", ["philox-numpy", "philox-torch"])
def test_draw_stacks_the_pairs_factors_on_the_device(generator):
    spec = NoiseSpec(seed=3, step=7, sigma=0.1, rank=2, generator=generator)
    shapes = {"a.weight": (12, 8), "b.weight": (12, 8), "c.weight": (5, 8)}
    drawn = {name: (a, b) for name, a, b in spec.draw([0, 2, 3], shapes, TEST_DEVICE)}
    assert sorted(drawn) == sorted(shapes)
    for name, (a, b) in drawn.items():
        assert a.shape == (3, shapes[name][0], 2) and b.shape == (3, 8, 2) and a.device.type == TEST_DEVICE
        one_a, one_b = spec.factors(2, name, shapes[name])
        assert torch.equal(a[1].cpu(), one_a) and torch.equal(b[1].cpu(), one_b)


def test_auto_generator_is_torch_on_a_gpu_and_numpy_on_a_cpu():
    assert resolve_generator("auto", "cuda") == "philox-torch" and resolve_generator("auto", "cpu") == "philox-numpy"
    assert resolve_generator("philox-torch", "cpu") == "philox-torch"
    with pytest.raises(ValueError, match="expected one of philox-numpy, philox-torch"):
        NoiseSpec(0, 0, 0.1, 1, generator="mt19937")
