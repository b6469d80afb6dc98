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

The run directory (outputs/<run>/, run_dir.py) holds the resolved recipe, the logs (metrics,
samples, evals, and the per-step fitness vectors that with the seed determine the run) and
checkpoints. `--resume` continues exactly: interrupted and resumed,
a run ends with the same weights, bit for bit (CPU, fp32), as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoTokenizer

from .backends import resolve_placement
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RecipeConfig
from .data import PromptLengths, prompt_ids, rows_for_step, sample_prompts
from .es import EggrollES
from .memory import TreeMemory, release_free_heap
from .params import load_tensors
from .prepare import prepare
from .progress import TrainProgress
from .report import write_report
from .run_dir import ENGINE_LOG, EVALS, FITNESS, METRICS, SAMPLES, RunDir
from .population import make_population
from .scoring import completion_lengths
from .tracking import Trackers, completions_table


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one step (a pure function, so resumed runs sample identically)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest(), "little")


def train(cfg: RecipeConfig, run: RunDir, resume: bool = False, console: Console | None = None, verbose: bool = False) -> Path | None:
    """Run (or continue) the recipe `cfg` in `run`; return the last checkpoint folder (None: none
    saved). The engine's own output goes to the run's engine.log, or to the console when `verbose`."""
    es_cfg, steps = cfg.es, cfg.train.steps

    # Data, rewards, model: everything that can fail on bad input fails here, before the run
    # directory is written and before the engine starts.
    inputs = prepare(cfg)
    model_dir, targets, reward_fn = inputs.model_dir, inputs.targets, inputs.reward_fn
    cfg, master_device = resolve_placement(cfg, model_dir, targets)
    run.save_config(cfg)
    if console is not None:
        console.print(f"run directory: [bold]{run}[/]  model: {model_dir}  targets: {len(targets)} matrices  "
                      f"noise: {cfg.es.noise}  master: {master_device.type}")

    # The fp32 master copy of the perturbed matrices lives here, once, and is what we update.
    es = EggrollES(es_cfg, seed=cfg.seed, total_steps=steps)
    start = 0
    latest = run.latest_checkpoint() if resume else None
    if latest is not None:
        state, saved_master, optimizer_state = load_checkpoint(latest)
        master = {name: saved_master[name].to(master_device) for name in targets}
        es.load_state_tensors({k: t.to(master_device) for k, t in optimizer_state.items()}, state["updates_applied"])
        start = state["step"]
    else:
        master = {name: t.to(master_device) for name, t in load_tensors(model_dir, targets, dtype=torch.float32).items()}
    if resume:  # drop what was logged after the checkpoint we continue from (all of it: none)
        run.truncate_logs(start if latest is not None else None)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eval_prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in inputs.eval_rows]
    prompt_lengths = PromptLengths.of([*sample_prompts(tokenizer, inputs.train_rows, cfg.data), *eval_prompts])
    engine_log = None if verbose else run / ENGINE_LOG
    population = make_population(cfg, model_dir, targets, reward_fn, engine_log, prompt_lengths, master, latest, start)
    try:
        def run_eval(step: int) -> dict:
            result = population.evaluate(eval_prompts, inputs.eval_rows)
            record = {"step": step, **result.summary()}
            run.append(EVALS, record)
            trackers.log(record, step, prefix="eval/")
            write_report([run.path])  # report.html, refreshed at each eval
            return record

        # Minutes of training so far (a resumed run's earlier steps count): train.time_budget_minutes.
        trained_seconds = sum(float(m.get("time/step", 0.0)) for m in run.read(METRICS))
        progress = TrainProgress(steps, start, console=console, budget_seconds=cfg.train.time_budget_minutes * 60,
                                 trained_seconds=trained_seconds)
        with progress, TreeMemory() as memory, Trackers(run, cfg) as trackers:
            if cfg.train.eval_every and start == 0:
                progress.update(eval=run_eval(0))
            for step in range(start, steps):
                t0 = time.perf_counter()
                # 1. ask: the step's noise (regenerated from indices wherever it is needed).
                noise = es.ask(step)
                rows = rows_for_step(inputs.train_rows, step, es_cfg.prompts_per_step, cfg.data.shuffle_seed)
                prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in rows]
                # 2. rollout: every member answers every prompt (one batched call per engine), and
                # 3. reward: the completions are graded (on a cluster, by the worker that made them).
                step_rollout = population.rollout(step, noise, rows, prompts, seed=step_seed(cfg.seed, step))
                rollout, scores = step_rollout.rollout, step_rollout.scores
                # 4. shape: rewards[member, prompt] (mean over samples) -> fitness[member].
                rewards = scores.total.mean(dim=2)
                fitness = es.shape(rewards)
                # 5. tell: the ES update, applied in place to the fp32 master weights.
                t_update = time.perf_counter()
                stats = es.tell(step, fitness, master)
                # 6. push: the engines take the update (on a cluster, each worker applies it itself).
                t_push = time.perf_counter()
                population.push(step, fitness, master)
                population.check(step, master)
                release_free_heap()  # else the heap's freed pages pile up, step after step
                t_end = time.perf_counter()

                record = {
                    "step": step + 1,
                    "reward_mean": float(rewards.mean()),
                    "reward_std": float(rewards.std(unbiased=False)),
                    "reward_max_member": float(rewards.mean(dim=1).max()),
                    **{f"reward/{k}": float(v.nanmean()) for k, v in scores.per_reward.items()},
                    # None, NaN or ±inf from a reward: scored 0 in the total (registry.py)
                    **{f"reward/{k}/missing": float(v.isnan().double().mean()) for k, v in scores.per_reward.items()},
                    "fitness_std": float(fitness.std(unbiased=False)),
                    "lr": stats.lr,
                    "sigma": stats.sigma,
                    "update_norm": stats.update_norm,
                    "grad_norm": stats.grad_norm,
                    "new_tokens": rollout.new_tokens,
                    **completion_lengths(rollout),
                    "tokens_per_s": rollout.new_tokens / max(rollout.seconds, 1e-9),
                    "time/generate": rollout.seconds,  # includes time/population_setup
                    "time/population_setup": rollout.setup_seconds,  # factors / LoRA adapters
                    "time/reward": step_rollout.reward_seconds,
                    "time/update": t_push - t_update,
                    "time/push": t_end - t_push,
                    "time/step": t_end - t0,
                    **memory.metrics(),
                    **({"cluster/workers": population.workers_alive, "cluster/bytes": population.take_network_bytes()}
                       if cfg.cluster.workers > 1 else {}),
                }
                run.append(METRICS, record)
                run.append(FITNESS, {"step": step, "fitness": fitness.tolist()})
                trackers.log(record, step + 1)
                if trackers and cfg.train.log_completions_every and (step + 1) % cfg.train.log_completions_every == 0:
                    trackers.table("completions", *completions_table(rows, scores), step + 1)
                for i in range(min(cfg.train.log_samples, len(scores.completions))):
                    member, prompt = divmod(i, len(rows))
                    run.append(SAMPLES, {
                        "step": step + 1, "member": member, "question": rows[prompt]["question"],
                        "answer": rows[prompt]["answer"],
                        "completion": rollout.texts[member][prompt][0],
                        "reward": float(scores.total[member, prompt, 0]),
                    })
                trained_seconds += record["time/step"]
                last = step + 1 == steps or 0 < cfg.train.time_budget_minutes * 60 <= trained_seconds
                eval_record = None
                if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or last):
                    eval_record = run_eval(step + 1)
                if (cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0) or (last and cfg.train.final_checkpoint):
                    save_checkpoint(
                        run.checkpoint_dir(step + 1), model_dir, master, es.state_tensors(),
                        {"step": step + 1, "seed": cfg.seed, "updates_applied": es.updates_applied,
                         "base_model": str(model_dir), "targets": targets},
                    )
                    run.prune_checkpoints(cfg.train.keep_checkpoints)
                progress.update(record=record, eval=eval_record)
                if last:
                    break
    finally:
        population.close()
    write_report([run.path])
    return run.latest_checkpoint()
