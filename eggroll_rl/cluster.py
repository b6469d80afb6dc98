"""The population on Ray workers: only seeds, rows and fitness cross the network.

Each worker is a Ray actor with an engine (vLLM or PyTorch backend, on cores or a GPU of its own)
and its own fp32 master copy and optimizer state. A step:

    driver -> each worker   (step, rows, prompt ids, member range [a, b), sampling seed)
    worker                  regenerates members a..b-1 from (seed, step, pair, parameter), generates,
                            grades with the recipe's rewards, returns rewards (members × prompts) and
                            its completions
    driver                  shapes fitness over all N members, updates its own master (checkpoints,
                            replay), logs
    driver -> every worker  the fitness vector (N floats); each applies the identical update to its
                            master and its engine

After start-up no weights cross the network: per-step traffic is O(N·P), whatever the model size
(logged as `cluster/bytes`). Every `cluster.check_every` steps each worker's master is hashed and
compared with the driver's: a mismatch stops the run with one line (the checkpoints are intact).

A worker that dies mid-step (killed, out of memory, node lost): its members are redistributed over
the others and the step goes on; a replacement actor then rebuilds its master, from the run's
latest checkpoint when it can read it, plus the fitness of the steps since (or from the base model
and the whole fitness log), checks its hash, and joins at the next step. Nothing is lost or counted
twice: members are index ranges and updates are a pure function of the fitness. With no worker
left the run stops with one line and stays resumable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError

from .backends import Rollout
from .config import RecipeConfig, from_dict, to_dict
from .data import PromptLengths
from .evaluation import EvalResult
from .learner import Learner
from .noise import NoiseSpec
from .population import LocalPopulation, StepRollout
from .scoring import Scores, recipe_reward

logger = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster cannot go on (a worker diverged, none is left), explained in one line."""


def master_hash(master: dict[str, torch.Tensor]) -> str:
    """A hash of the master weights' bytes, in name order: equal iff bitwise equal."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(master):
        h.update(name.encode())
        h.update(master[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def member_ranges(pairs: int, workers: int) -> list[range]:
    """Mirrored pairs split as evenly as possible, as member index ranges (2k, 2k+1 together)."""
    bounds = [round(pairs * i / workers) for i in range(workers + 1)]
    return [range(2 * a, 2 * b) for a, b in zip(bounds, bounds[1:])]


class PopulationWorker:
    """One Ray actor: an engine, a Learner of its own (master copy and optimizer state), the rewards."""

    def __init__(self, cfg_dict: dict, model_dir: str, targets: list[str], engine_log: str | None,
                 prompt_lengths: PromptLengths, cores: list[int] | None, checkpoint: str | None,
                 fitness_since: list[list[float]]) -> None:
        if cores:  # this worker's cores only: engines' threads never share a core
            os.sched_setaffinity(0, cores)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            torch.set_num_threads(len(cores))
        cfg = from_dict(cfg_dict)
        self.learner = Learner.start(cfg, Path(model_dir), targets, Path(checkpoint) if checkpoint else None)
        self.learner.catch_up(fitness_since)  # the steps since the session's start: replay.py's replay
        self.population = LocalPopulation(cfg, self.learner, recipe_reward(cfg.rewards),
                                          Path(engine_log) if engine_log else None, prompt_lengths)

    def rollout(self, step: int, noise: NoiseSpec, rows: list[dict], prompts: list[list[int]], seed: int,
                members: range) -> StepRollout:
        return self.population.rollout(step, noise, rows, prompts, seed, members)

    def update(self, step: int, fitness: list[float]) -> None:
        self.learner.tell(fitness)
        self.population.update(step, torch.tensor(fitness))

    def evaluate(self, prompts: list[list[int]], rows: list[dict]) -> EvalResult:
        return self.population.evaluate(prompts, rows)

    def master_hash(self) -> str:
        return master_hash(self.learner.master)

    def close(self) -> None:
        self.population.close()


class RayPopulation:
    """The population over `cfg.cluster.workers` Ray actors (see the module docstring)."""

    def __init__(self, cfg: RecipeConfig, learner: Learner, engine_log: Path | None, prompt_lengths: PromptLengths,
                 checkpoint: Path | None) -> None:
        self.cfg, self.learner = cfg, learner  # the trainer's: every worker's master must hash to its
        self.engine_log, self.prompt_lengths = engine_log, prompt_lengths
        # Where this session started (a checkpoint, or the base at step 0) and the fitness of every
        # step since: what a replacement worker replays to catch up.
        self.checkpoint = checkpoint
        self.fitness_since: list[list[float]] = []
        self._bytes = 0
        c = cfg.cluster
        if not ray.is_initialized():
            ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        local = c.address is None and c.gpus_per_worker == 0
        cpus = sorted(os.sched_getaffinity(0))
        per = c.cpus_per_worker or max(1, len(cpus) // c.workers)
        # slot -> its cores (local CPU workers: disjoint, so engines never share a core)
        self._cores = {i: cpus[i * per:(i + 1) * per] if local else None for i in range(c.workers)}
        self._actor = ray.remote(num_cpus=per, num_gpus=c.gpus_per_worker)(PopulationWorker)
        self.slots = {i: self._start(i) for i in range(c.workers)}
        ray.get([w.master_hash.remote() for w in self.slots.values()])  # every engine up before step one
        self._dead: list[int] = []

    @property
    def workers(self) -> list:
        return list(self.slots.values())

    def _start(self, slot: int):
        log = self.engine_log.with_name(f"{self.engine_log.stem}-worker{slot}{self.engine_log.suffix}") if self.engine_log else None
        return self._actor.remote(
            to_dict(self.cfg), str(self.learner.model_dir), self.learner.targets, str(log) if log else None,
            self.prompt_lengths, self._cores[slot], str(self.checkpoint) if self.checkpoint else None, self.fitness_since,
        )

    def _call(self, worker, method: str, *args):
        self._bytes += len(pickle.dumps(args))
        return getattr(worker, method).remote(*args)

    def rollout(self, step: int, noise: NoiseSpec, rows: list[dict], prompts: list[list[int]], seed: int) -> StepRollout:
        ranges = member_ranges(self.cfg.es.population // 2, len(self.slots))
        parts: dict[int, StepRollout] = {}
        todo = list(range(len(ranges)))
        while todo:
            workers = self.workers
            calls = {i: self._call(workers[n % len(workers)], "rollout", step, noise, rows, prompts, seed, ranges[i])
                     for n, i in enumerate(todo)}
            todo = []
            for i, ref in calls.items():
                try:
                    parts[i] = ray.get(ref)
                    self._bytes += len(pickle.dumps(parts[i]))
                except RayActorError:
                    todo.append(i)
            if todo:  # a worker died: its members go to the others; a replacement joins after the step
                self._drop_dead()
        ordered = [parts[i] for i in range(len(ranges))]
        return StepRollout(_merge([p.rollout for p in ordered]), _merge_scores([p.scores for p in ordered]),
                           max(p.reward_seconds for p in ordered))

    def _drop_dead(self) -> None:
        for slot, worker in list(self.slots.items()):
            try:
                ray.get(worker.master_hash.remote(), timeout=120)
            except (RayActorError, ray.exceptions.GetTimeoutError):
                del self.slots[slot]
                self._dead.append(slot)
                logger.warning("cluster worker %d died; its members go to the %d others", slot, len(self.slots))
        if not self.slots:
            raise ClusterError("cluster: no worker left; the run stops here and stays resumable (eggroll-rl train --resume RUN)")

    def update(self, step: int, fitness: torch.Tensor) -> None:
        """Every worker applies the update itself from the fitness vector; replacements for workers
        that died rebuild their master and join; every `cluster.check_every` steps each worker's
        master is compared with the trainer's."""
        vector = fitness.tolist()
        self.fitness_since.append(vector)
        ray.get([self._call(w, "update", step, vector) for w in self.workers])
        while self._dead:  # replacements rebuild their master, are checked, and join at the next step
            slot = self._dead.pop()
            worker = self._start(slot)
            self._compare(worker, step)
            self.slots[slot] = worker
        if (step + 1) % self.cfg.cluster.check_every == 0:
            for worker in self.workers:
                self._compare(worker, step)

    def _compare(self, worker, step: int) -> None:
        theirs, ours = ray.get(worker.master_hash.remote()), master_hash(self.learner.master)
        if theirs != ours:
            raise ClusterError(f"cluster: a worker's master weights differ from the trainer's after step {step + 1} "
                               f"(hash {theirs[:12]} vs {ours[:12]}); the run stops here: resume it from its last checkpoint")

    def metrics(self) -> dict[str, float]:
        """Workers alive, and bytes of requests and results (pickled) since the last step."""
        taken, self._bytes = self._bytes, 0
        return {"cluster/workers": len(self.slots), "cluster/bytes": taken}

    def evaluate(self, prompts: list[list[int]], rows: list[dict]) -> EvalResult:
        return ray.get(self.workers[0].evaluate.remote(prompts, rows))

    def close(self) -> None:
        for worker in self.workers:
            try:
                ray.get(worker.close.remote(), timeout=60)
                ray.kill(worker)
            except (RayActorError, ray.exceptions.GetTimeoutError):
                pass


def _merge(parts: list[Rollout]) -> Rollout:
    """Rollouts of consecutive member ranges as one (members concatenated)."""
    def cat(field: str) -> Any:
        values = [getattr(p, field) for p in parts]
        return None if any(v is None for v in values) else [x for v in values for x in v]

    return Rollout(texts=cat("texts"), new_tokens=sum(p.new_tokens for p in parts), seconds=max(p.seconds for p in parts),
                   setup_seconds=max(p.setup_seconds for p in parts), token_ids=cat("token_ids"), clipped=cat("clipped"))


def _merge_scores(parts: list[Scores]) -> Scores:
    return Scores(total=torch.cat([p.total for p in parts]),
                  per_reward={k: torch.cat([p.per_reward[k] for p in parts]) for k in parts[0].per_reward},
                  completions=[c for p in parts for c in p.completions],
                  extra={k: [v for p in parts for v in p.extra.get(k, [None] * len(p.completions))]
                         for k in {k for p in parts for k in p.extra}},
                  metrics={k: sum(v) / len(v) for k in {k for p in parts for k in p.metrics}
                           if (v := [p.metrics[k] for p in parts if k in p.metrics])})
