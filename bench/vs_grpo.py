"""EGGROLL against GRPO (TRL's GRPOTrainer) on the same recipe, at the same wall-clock marks.

    python bench/vs_grpo.py recipes/quickstart.yaml --minutes 15            # held-out, both methods
    python bench/vs_grpo.py recipes/quickstart.yaml --minutes 5 --split validation --methods grpo --grpo-lr 1e-6,1e-5,3e-5
    python bench/vs_grpo.py recipes/quickstart.yaml --minutes 5 --split validation --methods eggroll --eggroll es.lr=2.0
    python bench/vs_grpo.py recipes/quickstart.yaml --minutes 15 --split validation --methods grpo --grpo-lr 1e-5 --grpo-steps 145

Same model, training rows, prompt format (chat template, system prompt), reward functions and
generation length for both; each method trains in a process of its own for the same minutes of
training (engine start, model loading and evals excluded), while this process samples the peak
memory of that process tree. Weights at each mark are then scored by the same eval path as
`eggroll-rl eval` (same rows, greedy, same grader): EGGROLL's rebuilt from its fitness log by
replay (no checkpoint per mark needed), GRPO's saved by a trainer callback. Settings are chosen
on `--split validation` (rows carved off the training data, `data.validation_size`); the held-out
set is for the chosen ones only.

Writes OUT/summary.json, OUT/vs_grpo.png (accuracy vs minutes with 95% CI bands; peak memory) and
prints a table. GRPO runs as TRL users run it: TRL's defaults (lr 1e-6, 8 completions per
prompt, bf16 autocast, β = 0, loss "dapo"), full fine-tune on CPU, except what the recipe fixes
(completion length, the prompt format, rewards) and the learning rates swept here. TRL decays
the lr linearly to 0 over max_steps; the time budget, not max_steps, ends a run here, so the lr
stays constant unless `--grpo-steps N` gives that horizon (as EGGROLL's train.steps gives its
es.lr_schedule's).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

SELF = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------
# GRPO, in its own process


def grpo_child(spec: dict) -> None:
    """Train with TRL's GRPOTrainer for spec["minutes"]; save the model at each mark."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from eggroll_rl.config import load_config
    from eggroll_rl.data import load_rows, prompt_form
    from eggroll_rl.models import resolve_model
    from eggroll_rl.rewards import get_reward

    cfg = load_config(spec["recipe"], spec["overrides"])
    train_rows, _ = load_rows(cfg.data)
    model_dir = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = cfg.data

    def prompt(question):
        """The prompt eggroll_rl.data.prompt_ids makes, in TRL's form: chat messages (TRL applies
        the template and continues a final assistant message, as the response prefix is) or text."""
        form = prompt_form(tokenizer, question, data)
        if isinstance(form, str):
            return form + data.response_prefix
        return form + ([{"role": "assistant", "content": data.response_prefix}] if data.response_prefix else [])

    keep = sorted({k for r in train_rows for k in r} - {"prompt"})
    dataset = Dataset.from_list([{"prompt": prompt(r["question"]), **{k: r.get(k) for k in keep}} for r in train_rows])
    rewards = [get_reward(r.name) for r in cfg.rewards]
    marks = [m * 60 for m in spec["marks"]]
    out = Path(spec["out"])

    class Marks(TrainerCallback):
        """Saves the model at each wall-clock mark of training time; stops after the last. Marks
        after the last step (spec["steps"] reached first) get its weights, as EGGROLL's do."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.done = time.perf_counter(), 0

        def save_marks(self, state, model, elapsed: float, upto: float) -> None:
            while self.done < len(marks) and upto >= marks[self.done]:
                folder = out / f"mark_{spec['marks'][self.done]:g}"
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                (folder / "eggroll_mark.json").write_text(json.dumps({"step": state.global_step, "seconds": elapsed}))
                self.done += 1

        def on_step_end(self, args, state, control, model=None, **kwargs):
            elapsed = time.perf_counter() - self.start
            self.save_marks(state, model, elapsed, upto=elapsed)
            if self.done == len(marks):  # never cleared here: TRL's own stop at max_steps stands
                control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.save_marks(state, model, time.perf_counter() - self.start, upto=math.inf)

    args = GRPOConfig(
        output_dir=str(out / "trainer"), learning_rate=spec["lr"], max_completion_length=cfg.generation.max_new_tokens,
        per_device_train_batch_size=spec["prompts"] * spec["generations"], num_generations=spec["generations"],
        reward_weights=[r.weight for r in cfg.rewards], use_cpu=True, max_steps=spec["steps"] or 10**6, save_strategy="no",
        logging_steps=1, report_to=[], seed=cfg.seed, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Marks()])
    trainer.train()
    steps = trainer.state.global_step
    (out / "train_log.json").write_text(json.dumps({"steps": steps, "log": trainer.state.log_history}))


# ----------------------------------------------------------------------------------------
# The orchestration


def _watched(cmd: list[str], log: Path) -> float:
    """Run `cmd`, sampling its process tree's memory; return the peak RSS in GB."""
    from eggroll_rl.memory import GB, TreeMemory

    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        with TreeMemory(interval=0.5, pid=proc.pid) as memory:
            code = proc.wait()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {code}); see {log}")
    return memory.peak / GB


def step_cap(recipe: str, overrides: list[str]) -> list[str]:
    """The override that lifts EGGROLL's step cap, so that only the time budget ends the run; none
    where train.steps matters: given by the caller, or the horizon of the recipe's decaying
    es.lr_schedule / sigma_schedule."""
    from eggroll_rl.config import load_config

    es = load_config(recipe, overrides).es
    if any(o.startswith("train.steps=") for o in overrides) or es.lr_schedule != "constant" or es.sigma_schedule != "constant":
        return []
    return ["train.steps=100000"]


def run_eggroll(args, out: Path) -> dict:
    from eggroll_rl.exporting import export_run
    from eggroll_rl.run_dir import METRICS, RunDir

    run = out / "eggroll"
    overrides = [*args.overrides, *args.eggroll]
    cmd = [str(Path(sys.executable).parent / "eggroll-rl"), "train", args.recipe, *overrides,
           f"output_dir={out}", "run_name=eggroll", f"train.time_budget_minutes={args.minutes}", *step_cap(args.recipe, overrides),
           "train.eval_every=0", "train.checkpoint_every=0", "train.log_samples=0"]
    peak = _watched(cmd, out / "eggroll.log")
    metrics = RunDir(run).read(METRICS)
    elapsed, folders = 0.0, {}
    steps_at = []
    for m in metrics:
        elapsed += m["time/step"]
        steps_at.append((elapsed, m["step"]))
    for mark in args.marks:  # the last step finished by the mark; its weights rebuilt from the fitness log
        step = max((s for t, s in steps_at if t <= mark * 60), default=0)
        folder = out / f"eggroll_mark_{mark:g}"
        if step:
            export_run(run, out=folder, step=step, replay=True, force=True)
        folders[mark] = (folder if step else None, step)
    return {"peak_rss_gb": peak, "s_per_step": elapsed / max(len(metrics), 1), "steps": len(metrics), "folders": folders}


def run_grpo(args, out: Path, lr: float) -> dict:
    child = out / f"grpo_lr{lr:g}"
    spec = {"recipe": args.recipe, "overrides": args.overrides, "lr": lr, "marks": args.marks, "out": str(child),
            "prompts": args.grpo_prompts, "generations": args.grpo_generations, "steps": args.grpo_steps}
    peak = _watched([sys.executable, str(SELF), "--grpo-child", json.dumps(spec)], out / f"grpo_lr{lr:g}.log")
    log = json.loads((child / "train_log.json").read_text())
    folders = {}
    for mark in args.marks:
        folder = child / f"mark_{mark:g}"
        info = json.loads((folder / "eggroll_mark.json").read_text())
        folders[mark] = (folder, info["step"])
    seconds = json.loads((child / f"mark_{args.marks[-1]:g}" / "eggroll_mark.json").read_text())["seconds"]
    return {"peak_rss_gb": peak, "s_per_step": seconds / max(log["steps"], 1), "steps": log["steps"], "folders": folders}


def score(args, folders: dict, base: dict) -> list[dict]:
    """Accuracy with its 95% CI at each mark (0 = the base model) by the eval path of `eggroll-rl eval`."""
    from eggroll_rl.config import load_config
    from eggroll_rl.engines import evaluate_model

    cfg = load_config(args.recipe, [*args.overrides, f"data.evaluate_on={args.split}"])
    marks = [{"minutes": 0, "step": 0, **base}]
    for mark, (folder, step) in folders.items():
        summary = evaluate_model(cfg, str(folder)).summary() if folder is not None else base
        marks.append({"minutes": mark, "step": step, **{k: summary[k] for k in ("accuracy", "ci_low", "ci_high", "n")}})
    return marks


def machine(cfg) -> dict:
    """What the figures depend on: the CPU (its bf16 support decides the engine dtype and a
    several-fold speed difference), its cores, the engine dtype, the GPU where there is one."""
    import torch
    from eggroll_rl.machine import describe_run

    run = describe_run(cfg, torch.device("cpu"))
    return {"cpu": run["cpu"], "cores": run["cores"], "native_bf16": bool(run["cpu_native_bf16"]),
            "bf16_flags": run["cpu_native_bf16"], "engine_dtype": run["dtype"], "gpu": run["gpu"]}


def plot(summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    acc, mem = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    for i, (name, method) in enumerate(summary["methods"].items()):
        xs = [m["minutes"] for m in method["marks"]]
        acc.plot(xs, [m["accuracy"] for m in method["marks"]], marker="o", color=f"C{i}", label=name)
        acc.fill_between(xs, [m["ci_low"] for m in method["marks"]], [m["ci_high"] for m in method["marks"]], color=f"C{i}", alpha=0.15)
        mem.bar(i, method["peak_rss_gb"], color=f"C{i}")
    acc.set_xlabel("minutes of training")
    acc.set_ylabel(f"{summary['split']} accuracy (greedy), 95% CI")
    acc.set_title(f"{summary['recipe']}: EGGROLL vs GRPO\n{summary['machine']['cpu']}, {summary['machine']['cores']} cores, "
                  f"engine {summary['machine']['engine_dtype']}", fontsize=10)
    acc.grid(alpha=0.3)
    acc.legend(fontsize=8)
    mem.set_xticks(range(len(summary["methods"])), list(summary["methods"]), rotation=30, fontsize=8)
    mem.set_title("peak memory, process tree (GB)")
    fig.tight_layout()
    fig.savefig(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides for both methods")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--marks", default=None, help="minutes to score at (default: a third, two thirds, all)")
    parser.add_argument("--split", default="held_out", choices=["held_out", "validation"])
    parser.add_argument("--methods", default="eggroll,grpo")
    parser.add_argument("--eggroll", action="append", default=[], help="a key=value override for EGGROLL only (repeatable)")
    parser.add_argument("--grpo-lr", default="1e-6", help="learning rates to run GRPO with, comma-separated")
    parser.add_argument("--grpo-prompts", type=int, default=1, help="prompts per GRPO step (TRL default: 8 completions = 1 prompt)")
    parser.add_argument("--grpo-generations", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=0,
                        help="GRPO's max_steps, the horizon of TRL's default linear lr decay (default: none, a constant lr)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--grpo-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpo_child:
        return grpo_child(json.loads(args.grpo_child))
    if not args.recipe:
        parser.error("RECIPE is required")
    args.marks = [float(m) for m in args.marks.split(",")] if args.marks else [round(args.minutes * f, 3) for f in (1 / 3, 2 / 3, 1)]
    if args.split == "validation" and not any(o.startswith("data.validation_size=") for o in args.overrides):
        args.overrides.append("data.validation_size=200")

    from eggroll_rl.config import ConfigError, load_config
    from eggroll_rl.engines import evaluate_model
    from eggroll_rl.terminal import quiet_libraries

    quiet_libraries()
    try:  # both methods' recipes, before the first minute of work
        cfg = load_config(args.recipe, [*args.overrides, f"data.evaluate_on={args.split}"])
        if "eggroll" in args.methods:
            load_config(args.recipe, [*args.overrides, *args.eggroll])
    except ConfigError as e:
        sys.exit(f"vs_grpo.py: {e}")
    out = Path(args.out or f"outputs/vs_grpo-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in evaluate_model(cfg, cfg.model).summary().items() if k in ("accuracy", "ci_low", "ci_high", "n")}
    methods = {}
    if "eggroll" in args.methods:
        result = run_eggroll(args, out)
        marks = score(args, result.pop("folders"), base)
        methods["eggroll" + (f" ({' '.join(args.eggroll)})" if args.eggroll else "")] = {**result, "marks": marks}
    if "grpo" in args.methods:
        for lr in (float(x) for x in args.grpo_lr.split(",")):
            result = run_grpo(args, out, lr)
            marks = score(args, result.pop("folders"), base)
            decay = f", linear decay over {args.grpo_steps} steps" if args.grpo_steps else ""
            methods[f"grpo (lr {lr:g}{decay})"] = {**result, "marks": marks}
    summary = {"recipe": args.recipe, "overrides": args.overrides, "split": args.split, "minutes": args.minutes,
               "machine": machine(cfg), "methods": methods}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "vs_grpo.png")
    where = summary["machine"]
    print(f"{args.recipe} {' '.join(args.overrides)}: {args.split} accuracy at minutes of training (95% CI); "
          f"{where['cpu']}, {where['cores']} cores, native bf16: {', '.join(where['bf16_flags']) or 'none'}, "
          f"engine {where['engine_dtype']}{', ' + where['gpu'] if where['gpu'] else ''}")
    header = "".join(f"{m:>22g}" for m in [0, *args.marks])
    print(f"{'method':<34}{header}{'s/step':>9}{'peak GB':>9}")
    for name, method in methods.items():
        cells = "".join(f"{m['accuracy']:>8.3f} [{m['ci_low']:.2f},{m['ci_high']:.2f}]" for m in method["marks"])
        print(f"{name:<34}{cells}{method['s_per_step']:>9.1f}{method['peak_rss_gb']:>9.2f}")
    print(f"wrote {out / 'summary.json'} and {out / 'vs_grpo.png'}")


if __name__ == "__main__":
    main()
