"""Held-out evaluation: the same generation and grading path as training, on the base weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import GenerationConfig
from .scoring import Scores, score_rollout


@dataclass
class EvalResult:
    scores: Scores  # (1, prompts, samples)
    rows: list[dict[str, Any]]
    primary: str  # name of the reward reported as "accuracy" (the recipe's first reward)
    tokens_per_s: float

    def summary(self) -> dict[str, float]:
        out = {
            "accuracy": float(self.scores.per_reward[self.primary].nanmean()),
            "reward_mean": float(self.scores.total.mean()),
            "n": len(self.rows),
            "tokens_per_s": self.tokens_per_s,
        }
        out.update({f"reward/{k}": float(v.nanmean()) for k, v in self.scores.per_reward.items()})
        return out


def greedy(gen: GenerationConfig) -> GenerationConfig:
    return dataclasses.replace(gen, temperature=0.0, samples_per_prompt=1)


def evaluate(backend, prompts: list[list[int]], rows, gen: GenerationConfig, reward_fn, seed: int = 0) -> EvalResult:
    """Score the engine's current base weights on `rows` (greedy unless `gen` says otherwise
    for eval-time sampling; training's sampling settings are not used here)."""
    gen = greedy(gen) if gen.samples_per_prompt == 1 else gen
    rollout = backend.generate(prompts, gen, None, (), seed=seed)
    scores = score_rollout(rollout.texts, rows, reward_fn)
    return EvalResult(
        scores=scores,
        rows=rows,
        primary=next(iter(scores.per_reward)),
        tokens_per_s=rollout.new_tokens / max(rollout.seconds, 1e-9),
    )
