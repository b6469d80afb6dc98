"""Where the population runs: what the trainer asks of it, and the population in this process.

Each step the trainer asks a population (the `Population` protocol) for:

    rollout(step, noise, rows, prompts, seed)   every member answers every prompt; graded
    update(step, fitness)                       the step's update (already applied to the
                                                trainer's Learner) reaches every engine
    evaluate(prompts, rows)                     the current weights, scored on held-out rows
    metrics()                                   what it adds to the step's record

Here (`LocalPopulation`) the engine is one backend in this process, and `update` loads the
Learner's master into it. On a cluster (cluster.py) every worker holds an engine and a Learner of
its own and applies the same update from the fitness vector: only seeds, rows and fitness cross
the network. `engines.make_population` picks one for a recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .backends import Backend, Rollout, make_backend
from .config import RecipeConfig
from .data import PromptLengths
from .evaluation import EvalResult, evaluate
from .learner import Learner
from .noise import NoiseSpec
from .rewards import CombinedReward
from .scoring import Scores, score_rollout


@dataclass
class StepRollout:
    rollout: Rollout
    scores: Scores
    reward_seconds: float  # grading (on a cluster: the slowest worker's)


class Population(Protocol):
    def rollout(self, step: int, noise: NoiseSpec, rows: list[dict], prompts: list[list[int]], seed: int) -> StepRollout:
        """Every member answers every prompt; the completions graded."""

    def update(self, step: int, fitness: torch.Tensor) -> None:
        """Every engine takes the update of step `step` made from `fitness`."""

    def evaluate(self, prompts: list[list[int]], rows: list[dict]) -> EvalResult:
        """The current weights, unperturbed, scored on `rows`."""

    def metrics(self) -> dict[str, float]:
        """What the population adds to a step's record (none here; a cluster's workers and traffic)."""

    def close(self) -> None:
        """Release the engines."""


class LocalPopulation:
    """The whole population in one engine in this process, holding `learner`'s weights."""

    def __init__(self, cfg: RecipeConfig, learner: Learner, reward_fn: CombinedReward, engine_log: Path | None,
                 prompt_lengths: PromptLengths) -> None:
        self.cfg, self.learner, self.reward_fn = cfg, learner, reward_fn
        self.backend: Backend = make_backend(cfg, learner.model_dir, learner.targets, engine_log=engine_log,
                                             prompt_lengths=prompt_lengths)
        if learner.step:  # not the base model's weights: a checkpoint, or a fitness log caught up on
            self.backend.load_weights(learner.master)

    def rollout(self, step: int, noise: NoiseSpec, rows: list[dict], prompts: list[list[int]], seed: int,
                members: range | None = None) -> StepRollout:
        """Members (default: all of them; a cluster worker's: its range) answer every prompt, graded."""
        members = range(self.cfg.es.population) if members is None else members
        from transformers import TrainerState

        rollout = self.backend.generate(prompts, self.cfg.generation, noise, members, seed=seed)
        t0 = time.perf_counter()
        state = TrainerState(global_step=step, max_steps=self.cfg.train.steps)
        scores = score_rollout(rollout, rows, self.reward_fn, self.cfg.data, trainer_state=state)
        return StepRollout(rollout, scores, time.perf_counter() - t0)

    def update(self, step: int, fitness: torch.Tensor) -> None:
        self.backend.load_weights(self.learner.master)

    def evaluate(self, prompts: list[list[int]], rows: list[dict]) -> EvalResult:
        return evaluate(self.backend, prompts, rows, self.cfg.generation, self.reward_fn, self.cfg.data)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.backend.close()
