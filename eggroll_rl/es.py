"""The EGGROLL evolution strategy as ask/tell, with fitness shaping as small pure functions.

One sign convention everywhere: **maximize** reward.

Estimator. Member i of a step (N members, N/2 mirrored pairs) evaluates the weights W + Eᵢ with
Eᵢ = sᵢ·σ/√r·A_k·B_kᵀ (k = i // 2, sᵢ = ±1; see noise.py). With shaped fitness fᵢ the ES
gradient estimate of each perturbed matrix is

    ĝ = 1/(N·σ) · Σᵢ fᵢ·Eᵢ  =  1/(N·√r) · Σ_k (f_{2k} − f_{2k+1})·A_k·B_kᵀ

computed as one stacked product (out × K·r) @ (K·r × in), never an N×out×in tensor. ĝ estimates
∇_W E[F(W + σε)] with the usual Gaussian-smoothing ES identity (ε = E/σ).

Step size. SGD takes W ← W + lr·ĝ (Adam: W ← W + lr·m̂/(√v̂ + eps) on ĝ).
The official EGGROLL code (HyperscaleES, optax) instead feeds −√N·(1/N)·Σᵢ fᵢ·Eᵢ to a minimizing
optax solver, i.e. its SGD step is lr_off·σ/√N·Σᵢ fᵢ·εᵢ = lr_off·σ·√N·ĝ. So

    lr (here, es.lr_convention="gradient")  =  lr_off · σ · √N

and ``es.lr_convention: official`` takes es.lr in the official code's units (the paper's tables)
and converts it each step (with the scheduled σ). For Adam the two conventions differ only by the
scale Adam normalizes away, so the lr is the same number in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .noise import NoiseSpec, resolve_generator

# ----------------------------------------------------------------------------------------
# Fitness shaping: rewards[member, prompt] -> fitness[member]. Small pure functions.


def shape_normalize(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Subtract each prompt's mean over the population, divide by the global std (+eps).

    Removing the per-prompt baseline keeps easy and hard prompts from dominating the signal
    (the same idea as GRPO's group baseline); the global std keeps the step size independent
    of the reward's scale.
    """
    centered = rewards - rewards.mean(dim=0, keepdim=True)
    return (centered / (centered.std(unbiased=False) + eps)).mean(dim=1)


def shape_zscore(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each member's mean reward, standardized over the population (the authors' PyTorch+vLLM
    code). A per-prompt baseline would subtract the same constant from every member, so it is
    implied; but the std is that of the N member means, not of the N×P matrix as in
    :func:`shape_normalize`: with P prompts per step the fitness (and the step at equal lr) is
    about √P times larger."""
    scores = rewards.mean(dim=1)
    return (scores - scores.mean()) / (scores.std(unbiased=False) + eps)


def shape_centered_rank(rewards: torch.Tensor) -> torch.Tensor:
    """Centered ranks in [-0.5, 0.5] of each member's mean reward (ties share their mean rank)."""
    scores = rewards.mean(dim=1).double()
    n = scores.numel()
    if n == 1:
        return torch.zeros(1, dtype=rewards.dtype)
    order = scores.argsort(stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    for value in scores.unique():  # average the ranks of tied members
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return (ranks / (n - 1) - 0.5).to(rewards.dtype)


def shape_raw(rewards: torch.Tensor) -> torch.Tensor:
    """Each member's mean reward, unshaped."""
    return rewards.mean(dim=1)


FITNESS_SHAPING = {
    "normalize": shape_normalize,
    "zscore": shape_zscore,
    "centered_rank": shape_centered_rank,
    "raw": shape_raw,
}


# ----------------------------------------------------------------------------------------
# Schedules


def schedule(kind: str, base: float, step: int, total: int, final_ratio: float, warmup: int = 0) -> float:
    """Value at 0-based `step` of `total`: linear warmup, then constant / cosine / linear decay."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if kind == "constant" or total <= warmup + 1:
        return base
    progress = min(1.0, (step - warmup) / (total - warmup - 1))
    final = base * final_ratio
    if kind == "linear":
        return base + (final - base) * progress
    if kind == "cosine":
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}")


# ----------------------------------------------------------------------------------------
# Estimator


def low_rank_gradient(
    a: torch.Tensor, b: torch.Tensor, fitness: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ĝ of one matrix as factors (A: out × K·r, B: in × K·r, c) with ĝ = c·A·Bᵀ, from the pairs'
    stacked factors `a` (K, out, r) and `b` (K, in, r): A's columns are the pairs' A_k weighted
    by f_{2k} − f_{2k+1}, and c = 1/(N·√r). Never out × in."""
    n = fitness.numel()
    if n % 2:
        raise ValueError(f"population must be even (mirrored pairs), got {n}")
    pair_coeff = (fitness[0::2] - fitness[1::2]).to(a.device, torch.float32)  # (K,)
    out_features, in_features = a.shape[1], b.shape[1]
    a = (a * pair_coeff[:, None, None]).permute(1, 0, 2).reshape(out_features, -1)
    b = b.permute(1, 0, 2).reshape(in_features, -1)
    return a, b, 1.0 / (n * math.sqrt(rank))


def gradient_estimate(
    noise: NoiseSpec, fitness: torch.Tensor, name: str, shape: tuple[int, int]
) -> torch.Tensor:
    """ĝ = 1/(N·σ)·Σᵢ fᵢ·Eᵢ for one matrix, dense (fp32, CPU): one stacked low-rank product."""
    _, a, b = next(noise.draw(range(fitness.numel() // 2), {name: shape}))
    a, b, c = low_rank_gradient(a, b, fitness, noise.rank)
    return (a @ b.T) * c


def low_rank_sq_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖A·Bᵀ‖²_F = Σ (AᵀA) ⊙ (BᵀB): from the K·r × K·r Gram matrices, never the product."""
    return float(((a.T.double() @ a.double()) * (b.T.double() @ b.double())).sum())


# ----------------------------------------------------------------------------------------
# Ask / tell


class NonFiniteUpdateError(RuntimeError):
    """An update that would put inf or NaN into the weights: the run must stop before it is
    pushed or checkpointed (the last checkpoint stays the last good state)."""


@dataclass
class UpdateStats:
    lr: float
    sigma: float
    update_norm: float  # ‖ΔW‖ over all perturbed matrices
    grad_norm: float  # ‖ĝ‖


class EggrollES:
    """Ask for a step's noise, tell it the population's fitness; it updates the master weights.

    `master` is the fp32 master copy of the perturbed matrices ({name: tensor}); the optimizer
    state (momentum / Adam moments) lives here and is saved with checkpoints.
    """

    def __init__(self, es_cfg, seed: int, total_steps: int):
        self.cfg = es_cfg
        self.seed = seed
        self.total_steps = total_steps
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.updates_applied = 0
        # The trainer saves recipes with the generator resolved for its engine; "auto" left in a
        # recipe built elsewhere (tests, benchmarks) means the CPU's.
        self.noise_generator = resolve_generator(es_cfg.noise, "cpu")

    def sigma_at(self, step: int) -> float:
        c = self.cfg
        return schedule(c.sigma_schedule, c.sigma, step, self.total_steps, c.sigma_final_ratio)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        lr = schedule(c.lr_schedule, c.lr, step, self.total_steps, c.lr_final_ratio, c.warmup_steps)
        if c.lr_convention == "official" and c.optimizer == "sgd":
            lr *= self.sigma_at(step) * math.sqrt(c.population)
        return lr

    def ask(self, step: int) -> NoiseSpec:
        return NoiseSpec(seed=self.seed, step=step, sigma=self.sigma_at(step), rank=self.cfg.rank,
                         generator=self.noise_generator)

    def shape(self, rewards: torch.Tensor) -> torch.Tensor:
        return FITNESS_SHAPING[self.cfg.fitness_shaping](rewards)

    def tell(self, step: int, fitness: torch.Tensor, master: dict[str, torch.Tensor]) -> UpdateStats:
        """Apply one ascent step to every matrix of `master`, in place, one matrix at a time.

        Raises NonFiniteUpdateError, before touching anything, if the fitness, lr or σ is not
        finite, and before applying a matrix's delta if that delta is not (an overflow): the
        caller must then drop this master copy and stop.
        """
        noise = self.ask(step)
        lr = self.lr_at(step)
        bad = int((~torch.isfinite(fitness)).sum())
        if bad or not math.isfinite(lr) or not math.isfinite(noise.sigma):
            raise NonFiniteUpdateError(
                f"step {step}: {bad} of {fitness.numel()} fitness values are not finite (lr {lr:g}, sigma {noise.sigma:g}); "
                "no update was applied"
            )
        update_sq = grad_sq = 0.0
        self.updates_applied += 1
        shapes = {name: tuple(weight.shape) for name, weight in master.items()}
        device = next(iter(master.values())).device if master else torch.device("cpu")
        for name, a, b in noise.draw(range(fitness.numel() // 2), shapes, device):
            weight = master[name]
            a, b, c = low_rank_gradient(a, b, fitness, noise.rank)
            g_sq = c * c * low_rank_sq_norm(a, b)
            grad_sq += g_sq
            if self._plain_sgd:
                # W += lr·c·A·Bᵀ in one fused pass over W; the update is exactly lr·ĝ.
                if not math.isfinite(g_sq):
                    raise NonFiniteUpdateError(f"step {step}: the update of {name} is not finite (overflow); it was not applied")
                weight.addmm_(a, b.T, alpha=lr * c)
                update_sq += lr * lr * g_sq
                continue
            delta = self._direction(name, torch.mm(a, b.T).mul_(c)) * lr
            if self.cfg.weight_decay:
                delta -= lr * self.cfg.weight_decay * weight
            if not bool(torch.isfinite(delta).all()):
                raise NonFiniteUpdateError(f"step {step}: the update of {name} is not finite (overflow); it was not applied")
            weight.add_(delta)
            update_sq += float(torch.linalg.vector_norm(delta)) ** 2
        return UpdateStats(lr=lr, sigma=noise.sigma, update_norm=update_sq**0.5, grad_norm=grad_sq**0.5)

    @property
    def _plain_sgd(self) -> bool:
        """SGD without momentum or weight decay: the update stays low rank until it is added."""
        return self.cfg.optimizer == "sgd" and not self.cfg.momentum and not self.cfg.weight_decay

    def _direction(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.optimizer == "sgd":
            if not c.momentum:
                return grad
            buf = self.state.setdefault(name, {}).get("momentum")
            buf = grad.clone() if buf is None else buf.mul_(c.momentum).add_(grad)
            self.state[name]["momentum"] = buf
            return buf
        beta1, beta2 = c.adam_betas
        st = self.state.setdefault(name, {})
        m = st.get("exp_avg")
        v = st.get("exp_avg_sq")
        if m is None:
            m, v = torch.zeros_like(grad), torch.zeros_like(grad)
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        t = self.updates_applied
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        return m_hat / (v_hat.sqrt() + c.adam_eps)

    # Checkpointing: flat {"<param>::<slot>": tensor} for safetensors, plus the step counter.
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}::{slot}": t for name, slots in self.state.items() for slot, t in slots.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates_applied: int) -> None:
        self.state = {}
        for key, t in tensors.items():
            name, slot = key.rsplit("::", 1)
            self.state.setdefault(name, {})[slot] = t.clone()
        self.updates_applied = updates_applied
