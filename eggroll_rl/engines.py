"""Which population a recipe runs: one engine here, or Ray workers (`cluster.workers > 1`)."""

from __future__ import annotations

from pathlib import Path

from .config import RecipeConfig
from .data import PromptLengths
from .learner import Learner
from .population import LocalPopulation, Population
from .rewards import CombinedReward


def make_population(cfg: RecipeConfig, learner: Learner, reward_fn: CombinedReward, engine_log: Path | None,
                    prompt_lengths: PromptLengths, checkpoint: Path | None) -> Population:
    """The recipe's population, its engines holding `learner`'s weights (`checkpoint`: where they
    were loaded from, which a cluster's replacement workers start from too)."""
    if cfg.cluster.workers > 1:
        from .cluster import RayPopulation  # Ray is an optional extra, imported only for a cluster

        return RayPopulation(cfg, learner, engine_log, prompt_lengths, checkpoint)
    return LocalPopulation(cfg, learner, reward_fn, engine_log, prompt_lengths)
