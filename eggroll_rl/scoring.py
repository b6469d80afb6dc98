"""Grading rollouts: the one path shared by training rewards and `eggroll-rl eval`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .backends.base import Rollout
from .config import ConfigError, DataConfig, RewardSpec
from .data import columns, is_conversational, reward_prompt
from .rewards import CombinedReward, combine_rewards


@dataclass
class Scores:
    total: torch.Tensor  # (members, prompts, samples) weighted reward sum
    per_reward: dict[str, torch.Tensor]  # raw value of each reward, NaN where it returned None
    completions: list[str]  # flat, member-major then prompt then sample
    # What rewards logged through TRL's hooks: log_extra columns (one value per completion) and
    # log_metric scalars (their mean over the calls).
    extra: dict[str, list[Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class RewardLogs:
    """TRL's `log_extra(column, values)` and `log_metric(name, value)` hooks for reward functions."""

    def __init__(self) -> None:
        self.extra: dict[str, list[Any]] = {}
        self.metric_values: dict[str, list[float]] = {}

    def log_extra(self, column: str, values: list) -> None:
        self.extra.setdefault(column, []).extend(values)

    def log_metric(self, name: str, value: float) -> None:
        self.metric_values.setdefault(name, []).append(float(value))

    def metrics(self) -> dict[str, float]:
        return {name: sum(v) / len(v) for name, v in self.metric_values.items()}


def score_rollout(rollout: Rollout, rows: list[dict[str, Any]], reward_fn: CombinedReward, data: DataConfig,
                  trainer_state: Any = None) -> Scores:
    """Grade the rollout's texts[member][prompt][sample] against the prompts' rows with
    `reward_fn`, called as TRL (1.16) calls reward functions: ``prompts=``, ``completions=``
    (chat messages when the dataset is conversational), ``completion_ids=`` (the generated token
    ids; None from a backend that does not give them) and every dataset column, all as keyword
    lists aligned with the completions; and ``trainer_state=`` (a transformers TrainerState:
    global_step is the updates applied, max_steps the run's steps), ``log_extra=`` and
    ``log_metric=`` (their values come back in Scores.extra and Scores.metrics)."""
    from transformers import TrainerState

    logs = RewardLogs()
    texts = rollout.texts
    members, prompts, samples = len(texts), len(texts[0]), len(texts[0][0])
    flat = [t for per_member in texts for per_prompt in per_member for t in per_prompt]
    ids = [i for per_member in rollout.token_ids for per_prompt in per_member for i in per_prompt] if rollout.token_ids else None
    row_of = [rows[p] for _ in range(members) for p in range(prompts) for _ in range(samples)]
    asked = [reward_prompt(r["question"], data) for r in row_of]
    completions = [[{"role": "assistant", "content": t}] if is_conversational(q) else t for t, q in zip(flat, asked)]
    total, per_reward = reward_fn(completions, prompts=asked, completion_ids=ids, **columns(row_of),
                                  trainer_state=trainer_state or TrainerState(), log_extra=logs.log_extra,
                                  log_metric=logs.log_metric)
    shape = (members, prompts, samples)

    def as_tensor(values: list[float | None]) -> torch.Tensor:
        return torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float64).reshape(shape)

    return Scores(
        total=as_tensor(total),
        per_reward={name: as_tensor(values) for name, values in per_reward.items()},
        completions=flat,
        extra=logs.extra,
        metrics=logs.metrics(),
    )


def completion_lengths(rollout: Rollout) -> dict[str, float]:
    """TRL's completion metrics: mean/min/max length in tokens, and the fraction cut at
    max_new_tokens (answers that never finished); {} from a backend that gives no token ids."""
    lengths = rollout.lengths()
    if not lengths:
        return {}
    return {"completions/mean_length": sum(lengths) / len(lengths), "completions/min_length": float(min(lengths)),
            "completions/max_length": float(max(lengths)), "completions/clipped_ratio": rollout.clipped_ratio()}


def missing_as_none(value: torch.Tensor | float) -> float | None:
    """One reward value for JSON and tables: NaN (a missing value) becomes None."""
    value = float(value)
    return None if value != value else value


def recipe_reward(reward_specs: list[RewardSpec]) -> CombinedReward:
    """The recipe's rewards combined by weight; a bad name is a one-line recipe error."""
    try:
        return combine_rewards([(r.name, r.weight) for r in reward_specs])
    except ValueError as exc:
        raise ConfigError(f"rewards: {exc}") from None
