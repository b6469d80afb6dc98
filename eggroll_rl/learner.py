"""The weights' state of a run, with one owner: the Learner.

It holds the fp32 master copy of the perturbed matrices, the evolution strategy with its
optimizer state (es.py), and the count of updates applied. It starts from the base model or a
checkpoint, catches up on a fitness log (the update is a pure function of the noise, which is
regenerated, and of the fitness: replay.py), applies a step, and writes its checkpoint. The
trainer, each Ray worker (cluster.py) and replay build it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RecipeConfig
from .es import EggrollES, UpdateStats
from .noise import NoiseSpec
from .params import load_tensors

# The trainer's fitness tensors are float64 (scores are float64; shaping keeps the dtype), and the
# update subtracts mirrored pairs in that dtype before casting: a fitness log replays in it too.
FITNESS_DTYPE = torch.float64


class Learner:
    """The fp32 master, the ES and its optimizer state, after `step` updates."""

    def __init__(self, cfg: RecipeConfig, model_dir: Path, targets: list[str], master: dict[str, torch.Tensor],
                 es: EggrollES, step: int) -> None:
        self.cfg, self.model_dir, self.targets = cfg, Path(model_dir), list(targets)
        self.master, self.es, self.step = master, es, step

    @classmethod
    def start(cls, cfg: RecipeConfig, model_dir: Path, targets: list[str], checkpoint: Path | None = None,
              device: str | torch.device = "cpu") -> Learner:
        """From the base model's weights (step 0), or from a checkpoint of a run of `cfg`."""
        es = EggrollES(cfg.es, seed=cfg.seed, total_steps=cfg.train.steps)
        if checkpoint is None:
            master = load_tensors(model_dir, targets, dtype=torch.float32)
            step = 0
        else:
            state, master, optimizer = load_checkpoint(Path(checkpoint))
            es.load_state_tensors({key: t.to(device) for key, t in optimizer.items()}, state["updates_applied"])
            step = state["step"]
        return cls(cfg, model_dir, targets, {name: master[name].to(device) for name in targets}, es, step)

    def ask(self) -> NoiseSpec:
        """The noise of the next step."""
        return self.es.ask(self.step)

    def shape(self, rewards: torch.Tensor) -> torch.Tensor:
        """rewards[member, prompt] -> fitness[member] (the recipe's fitness shaping)."""
        return self.es.shape(rewards)

    def tell(self, fitness: torch.Tensor | list[float]) -> UpdateStats:
        """Apply the next step's update for `fitness` to the master, in place."""
        stats = self.es.tell(self.step, torch.as_tensor(fitness, dtype=FITNESS_DTYPE), self.master)
        self.step += 1
        return stats

    def catch_up(self, fitness_log: Iterable[list[float]]) -> list[UpdateStats]:
        """Apply the updates of the logged fitness vectors of the steps from here on."""
        return [self.tell(fitness) for fitness in fitness_log]

    def save(self, dest: Path) -> Path:
        """The checkpoint folder of this state (checkpoint.py)."""
        return save_checkpoint(
            dest, self.model_dir, self.master, self.es.state_tensors(),
            {"step": self.step, "seed": self.cfg.seed, "updates_applied": self.es.updates_applied,
             "base_model": str(self.model_dir), "targets": self.targets},
        )
