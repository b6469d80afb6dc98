"""EGGROLL training: evolution strategies with low-rank perturbations, top to bottom.

Why ES for LLM reasoning? GRPO-style RL needs backprop through the policy (activations kept,
an optimizer state per weight, a training engine whose numerics differ from the inference engine
that samples). ES needs only forward passes: every population member is the base model plus a
perturbation, each member answers the same prompts, and the update is a fitness-weighted sum of
the perturbations. The reward can be anything, non-differentiable included: a grader, a test
suite, a checker. EGGROLL makes ES cheap for matrices: each member's perturbation of a weight W
(out×in) is low rank, E = ±σ/√r·A·Bᵀ, so a member costs one thin extra product per layer
(`x·Wᵀ + σ/√r·(x·B)·Aᵀ`) instead of its own copy of the model, while the population's update
Σᵢ fᵢ·Eᵢ still has rank up to N·r.

One step:
  1. ask     the step's noise: factors (A, B) of each member pair are a pure function of
             (seed, step, pair, parameter) — regenerated wherever needed, never stored.
  2. rollout every member (mirrored ± pairs) answers the same prompts, in one batched call.
  3. reward  verifiable rewards grade each completion (math answers, tests, format).
  4. shape   per-prompt mean removed, divided by the global std → one fitness per member.
  5. tell    ĝ = 1/(Nσ)·Σᵢ fᵢ·Eᵢ per matrix, an optimizer step on the fp32 master copy (es.py).
  6. push    the new weights go back into the engine; then log, evaluate, checkpoint.

The fp32 master copy, the optimizer state and the count of updates belong to the Learner
(learner.py); the engines to the population (population.py, cluster.py). The run directory
(outputs/<run>/, run_dir.py) holds the resolved recipe, the logs (metrics,
samples, evals, and the per-step fitness vectors that with the seed determine the run) and
checkpoints. `--resume` continues exactly: interrupted and resumed,
a run ends with the same weights, bit for bit (CPU, fp32), as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoTokenizer

from .machine import describe_run, resolve_placement
from .config import RecipeConfig
from .data import PromptLengths, prompt_ids, rows_for_step, sample_prompts
from .engines import make_population
from .es import UpdateStats
from .learner import Learner
from .memory import TreeMemory, release_free_heap
from .population import Population, StepRollout
from .prepare import RecipeInputs, prepare
from .progress import TrainProgress
from .report import write_report
from .run_dir import ENGINE_LOG, EVALS, FITNESS, METRICS, SAMPLES, RunDir
from .scoring import completion_lengths
from .tracking import Trackers, completions_table


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one step (a pure function, so resumed runs sample identically)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest(), "little")


def train(cfg: RecipeConfig, run: RunDir, resume: bool = False, console: Console | None = None,
          verbose: bool = False) -> Path | None:
    """Run (or continue) the recipe `cfg` in `run`; return the last checkpoint folder (None: none
    saved). The engine's own output goes to the run's engine.log, or to the console when `verbose`."""
    cfg, inputs, learner, checkpoint = begin(cfg, run, resume, console)
    tokenizer = AutoTokenizer.from_pretrained(learner.model_dir)
    eval_prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in inputs.eval_rows]
    prompt_lengths = PromptLengths.of([*sample_prompts(tokenizer, inputs.train_rows, cfg.data), *eval_prompts])
    population = make_population(cfg, learner, inputs.reward_fn, None if verbose else run / ENGINE_LOG,
                                 prompt_lengths, checkpoint)
    steps, every, budget = cfg.train.steps, cfg.train, cfg.train.time_budget_minutes * 60
    trained_seconds = sum(float(m.get("time/step", 0.0)) for m in run.read(METRICS))  # earlier sessions count
    try:
        with TrainProgress(steps, learner.step, console=console, budget_seconds=budget, trained_seconds=trained_seconds) as progress, \
                TreeMemory() as memory, Trackers(run, cfg) as trackers:
            evaluate = evaluator(run, population, trackers, eval_prompts, inputs.eval_rows)
            if every.eval_every and learner.step == 0:
                progress.update(eval=evaluate(0))
            for step in range(learner.step, steps or sys.maxsize):
                t0 = time.perf_counter()
                # 1. ask: the step's noise (regenerated from indices wherever it is needed).
                noise = learner.ask()
                rows = rows_for_step(inputs.train_rows, step, cfg.es.prompts_per_step, cfg.data.shuffle_seed)
                prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in rows]
                # 2. rollout: every member answers every prompt (one batched call per engine), and
                # 3. reward: the completions are graded (on a cluster, by the worker that made them).
                rollout = population.rollout(step, noise, rows, prompts, seed=step_seed(cfg.seed, step))
                if not steps:  # train.steps 0: the horizon the budget holds, fixed before the first update
                    cfg, steps = fix_horizon(cfg, run, learner, time.perf_counter() - t0)
                # 4. shape: rewards[member, prompt] (mean over samples) -> fitness[member].
                rewards = rollout.scores.total.mean(dim=2)
                fitness = learner.shape(rewards)
                # 5. tell: the ES update, applied in place to the fp32 master weights.
                t_update = time.perf_counter()
                stats = learner.tell(fitness)
                # 6. push: the engines take the update (on a cluster, each worker applies it itself).
                t_push = time.perf_counter()
                population.update(step, fitness)
                release_free_heap()  # else the heap's freed pages pile up, step after step
                times = {"time/update": t_push - t_update, "time/push": time.perf_counter() - t_push,
                         "time/step": time.perf_counter() - t0}
                record = step_record(step, rollout, rewards, fitness, stats, times, memory, population)
                log_step(run, trackers, cfg, step, rows, rollout, fitness, record)
                trained_seconds += record["time/step"]
                last = step + 1 == steps or 0 < budget <= trained_seconds
                eval_record = evaluate(step + 1) if every.eval_every and ((step + 1) % every.eval_every == 0 or last) else None
                if (every.checkpoint_every and (step + 1) % every.checkpoint_every == 0) or (last and every.final_checkpoint):
                    learner.save(run.checkpoint_dir(step + 1))
                    run.prune_checkpoints(every.keep_checkpoints)
                progress.update(record=record, eval=eval_record)
                if last:
                    break
    finally:
        population.close()
    write_report([run.path])
    return run.latest_checkpoint()


def evaluator(run: RunDir, population: Population, trackers: Trackers, prompts: list[list[int]],
              rows: list[dict]) -> Callable[[int], dict]:
    """evaluate(step): the current weights scored on the held-out rows, logged, and report.html
    refreshed; returns the eval record."""
    def evaluate(step: int) -> dict:
        record = {"step": step, **population.evaluate(prompts, rows).summary()}
        run.append(EVALS, record)
        trackers.log(record, step, prefix="eval/")
        write_report([run.path])
        return record

    return evaluate


def fix_horizon(cfg: RecipeConfig, run: RunDir, learner: Learner, rollout_seconds: float) -> tuple[RecipeConfig, int]:
    """train.steps 0: the steps train.time_budget_minutes holds at the first rollout's pace (at
    least 2), set as the schedules' horizon and saved in config.yaml before any update is made."""
    steps = max(2, int(cfg.train.time_budget_minutes * 60 // max(rollout_seconds, 1e-9)))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    run.save_config(cfg)
    learner.es.total_steps = steps
    return cfg, steps


def begin(cfg: RecipeConfig, run: RunDir, resume: bool, console: Console | None) -> tuple[RecipeConfig, RecipeInputs, Learner, Path | None]:
    """Check everything that can fail on bad input before the run directory is written and any
    engine starts (data, rewards, model, placement); save the recipe; start the Learner (from the
    run's last checkpoint on resume, dropping what was logged after it). Returns the recipe as the
    run records it, its inputs, the Learner and the checkpoint it started from."""
    inputs = prepare(cfg)
    cfg, master_device = resolve_placement(cfg, inputs.model_dir, inputs.targets)
    run.save_config(cfg)
    run.record_machine(describe_run(cfg, master_device))
    checkpoint = run.latest_checkpoint() if resume else None
    learner = Learner.start(cfg, inputs.model_dir, inputs.targets, checkpoint, device=master_device)
    if resume:
        run.truncate_logs(learner.step if checkpoint is not None else None)
    if console is not None:
        console.print(f"run directory: [bold]{run}[/]  model: {inputs.model_dir}  targets: {len(inputs.targets)} matrices  "
                      f"noise: {cfg.es.noise}  master: {master_device.type}")
    return cfg, inputs, learner, checkpoint


def step_record(step: int, step_rollout: StepRollout, rewards: torch.Tensor, fitness: torch.Tensor, stats: UpdateStats,
                times: dict[str, float], memory: TreeMemory, population: Population) -> dict:
    """metrics.jsonl's record of one step (its "step": the updates applied after it)."""
    rollout, scores = step_rollout.rollout, step_rollout.scores
    return {
        "step": step + 1,
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)),
        "reward_max_member": float(rewards.mean(dim=1).max()),
        **{f"rewards/{k}/mean": float(v.nanmean()) for k, v in scores.per_reward.items()},
        **{f"rewards/{k}/std": float(v[~v.isnan()].std(unbiased=False)) if (~v.isnan()).any() else float("nan")
           for k, v in scores.per_reward.items()},
        # None, NaN or ±inf from a reward: scored 0 in the total (registry.py)
        **{f"rewards/{k}/missing": float(v.isnan().double().mean()) for k, v in scores.per_reward.items()},
        # TRL's signal-health number: the share of prompts on which every member scored the same
        # (no fitness signal from them at all).
        "frac_reward_zero_std": float((rewards.std(dim=0, unbiased=False) == 0).double().mean()),
        "fitness_std": float(fitness.std(unbiased=False)),
        "learning_rate": stats.lr,
        "sigma": stats.sigma,
        "update_norm": stats.update_norm,
        "grad_norm": stats.grad_norm,
        "new_tokens": rollout.new_tokens,
        **completion_lengths(rollout),
        "tokens_per_s": rollout.new_tokens / max(rollout.seconds, 1e-9),
        "time/generate": rollout.seconds,  # includes time/population_setup
        "time/population_setup": rollout.setup_seconds,  # factors / LoRA adapters
        "time/reward": step_rollout.reward_seconds,
        **times,
        **memory.metrics(),
        **population.metrics(),
        **scores.metrics,  # what rewards logged with log_metric
    }


def log_step(run: RunDir, trackers: Trackers, cfg: RecipeConfig, step: int, rows: list[dict], step_rollout: StepRollout,
             fitness: torch.Tensor, record: dict) -> None:
    """The step's record, fitness vector and sample completions to the run directory and trackers."""
    scores = step_rollout.scores
    run.append(METRICS, record)
    run.append(FITNESS, {"step": step, "fitness": fitness.tolist()})
    trackers.log(record, step + 1)
    if trackers and cfg.train.log_completions_every and (step + 1) % cfg.train.log_completions_every == 0:
        trackers.table("completions", *completions_table(rows, scores), step + 1)
    samples = scores.total.shape[2]
    for i in range(min(cfg.train.log_samples, len(scores.completions))):
        member, prompt = divmod(i, len(rows))
        run.append(SAMPLES, {
            "step": step + 1, "member": member, "question": rows[prompt]["question"], "answer": rows[prompt]["answer"],
            "completion": step_rollout.rollout.texts[member][prompt][0], "reward": float(scores.total[member, prompt, 0]),
            **{column: values[i * samples] if i * samples < len(values) else None  # rewards' log_extra
               for column, values in scores.extra.items()},
        })
