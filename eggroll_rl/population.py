"""Where the population runs: here in one engine, or on a cluster of workers (cluster.py).

The trainer asks a population for three things each step, whatever it runs on:

    rollout(step, noise, rows, prompts, seed)   every member answers every prompt; graded
    push(step, fitness, master)                 the step's update reaches every engine
    evaluate(prompts, rows)                     the current weights, scored on held-out rows

Here (`LocalPopulation`), the engine is one backend in this process and `push` loads the
trainer's updated master into it. On a cluster every worker holds an engine and a master copy of
its own and applies the same update itself from the fitness vector: only seeds, rows and fitness
cross the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import Backend, Rollout, make_backend
from .config import RecipeConfig
from .data import PromptLengths
from .evaluation import EvalResult, evaluate
from .noise import NoiseSpec
from .rewards import CombinedReward
from .scoring import Scores, score_rollout


@dataclass
class StepRollout:
    rollout: Rollout
    scores: Scores
    reward_seconds: float  # grading (on a cluster: the slowest worker's)


class LocalPopulation:
    """The whole population in one engine in this process."""

    workers_alive = 1

    def __init__(self, cfg: RecipeConfig, model_dir: Path, targets: list[str], reward_fn: CombinedReward,
                 engine_log: Path | None, prompt_lengths: PromptLengths) -> None:
        self.cfg, self.reward_fn = cfg, reward_fn
        self.backend: Backend = make_backend(cfg, model_dir, targets, engine_log=engine_log, prompt_lengths=prompt_lengths)

    def rollout(self, step: int, noise: NoiseSpec, rows: list[dict], prompts: list[list[int]], seed: int,
                members: range | None = None) -> StepRollout:
        """Members (default: all of them) answer every prompt, graded."""
        members = range(self.cfg.es.population) if members is None else members
        rollout = self.backend.generate(prompts, self.cfg.generation, noise, members, seed=seed)
        t0 = time.perf_counter()
        scores = score_rollout(rollout, rows, self.reward_fn, self.cfg.data)
        return StepRollout(rollout, scores, time.perf_counter() - t0)

    def push(self, step: int, fitness: torch.Tensor, master: dict[str, torch.Tensor]) -> None:
        self.backend.load_weights(master)

    def evaluate(self, prompts: list[list[int]], rows: list[dict]) -> EvalResult:
        return evaluate(self.backend, prompts, rows, self.cfg.generation, self.reward_fn, self.cfg.data)

    def check(self, step: int, master: dict[str, torch.Tensor]) -> None:
        """Nothing to compare: the engine's weights are the trainer's master."""

    def take_network_bytes(self) -> int:
        """Bytes sent and received since the last call: none here."""
        return 0

    def close(self) -> None:
        self.backend.close()


def make_population(cfg: RecipeConfig, model_dir: Path, targets: list[str], reward_fn: CombinedReward,
                    engine_log: Path | None, prompt_lengths: PromptLengths, master: dict[str, torch.Tensor],
                    checkpoint: Path | None, start: int):
    """The recipe's population, its engines holding `master` (the weights after `start` steps,
    saved in `checkpoint` when start > 0)."""
    if cfg.cluster.workers > 1:
        from .cluster import RayPopulation  # Ray is an optional extra, imported only for a cluster

        return RayPopulation(cfg, model_dir, targets, engine_log, prompt_lengths, checkpoint, start)
    population = LocalPopulation(cfg, model_dir, targets, reward_fn, engine_log, prompt_lengths)
    if start:
        population.backend.load_weights(master)
    return population
