"""Engines for a recipe: the population that trains (one engine here, or Ray workers when
`cluster.workers > 1`), and the engine that scores a model."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from .backends import make_backend
from .config import RecipeConfig
from .data import PromptLengths, prompt_ids
from .evaluation import EvalResult, evaluate
from .learner import Learner
from .population import LocalPopulation, Population
from .prepare import prepare
from .rewards import CombinedReward


def make_population(cfg: RecipeConfig, learner: Learner, reward_fn: CombinedReward, engine_log: Path | None,
                    prompt_lengths: PromptLengths, checkpoint: Path | None) -> Population:
    """The recipe's population, its engines holding `learner`'s weights (`checkpoint`: where they
    were loaded from, which a cluster's replacement workers start from too)."""
    if cfg.cluster.workers > 1:
        from .cluster import RayPopulation  # Ray is an optional extra, imported only for a cluster

        return RayPopulation(cfg, learner, engine_log, prompt_lengths, checkpoint)
    return LocalPopulation(cfg, learner, reward_fn, engine_log, prompt_lengths)


def evaluate_model(cfg: RecipeConfig, model_spec: str, seed: int = 0, engine_log: Path | None = None) -> EvalResult:
    """Load `model_spec` (alias, folder, hub id, run or checkpoint) and score it on the recipe's
    held-out rows with the recipe's prompt format, generation settings and rewards."""
    inputs = prepare(cfg, model_spec)
    tokenizer = AutoTokenizer.from_pretrained(inputs.model_dir)
    prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in inputs.eval_rows]
    with make_backend(cfg, inputs.model_dir, inputs.targets, engine_log=engine_log, prompt_lengths=PromptLengths.of(prompts)) as backend:
        return evaluate(backend, prompts, inputs.eval_rows, cfg.generation, inputs.reward_fn, cfg.data, seed=seed)
