"""Seconds of one training step's rollout (every member answers the step's prompts) of a recipe,
for several variants of it in one run.

    python bench/step_rollout.py recipes/quickstart.yaml \
        --variant "data.system_prompt=Reply with only the final number." \
        --variant "data.system_prompt=Reply with only the final number.|vllm.block_size=32" --variant ""

A variant is `|`-separated key=value overrides ("" = the recipe as it is). Each runs in a fresh
process (an engine's options are fixed when it starts): engine start, a warm-up call, then
`--repeats` rollouts of the first steps' prompts with that step's noise, as the trainer makes
them. Prints, per variant, the prompts' lengths (longest, common start), the engine's KV block
size, seconds per rollout, the ratio to the first variant, and the peak RSS of the process tree
(the engine's processes included) over the variant's whole run.

`--reload` pushes the model's own (unchanged) weights into the engine after every rollout, the
way the trainer pushes its update: the rollouts after the first then show what a reload costs the
engine's generation, apart from any change of the weights' values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def child(recipe: str, overrides: list[str], repeats: int, reload: bool) -> dict:
    import torch
    from transformers import AutoTokenizer

    from eggroll_rl.backends import make_backend
    from eggroll_rl.config import load_config
    from eggroll_rl.data import PromptLengths, prompt_ids, rows_for_step, sample_prompts
    from eggroll_rl.memory import GB, TreeMemory
    from eggroll_rl.noise import NoiseSpec
    from eggroll_rl.params import load_tensors
    from eggroll_rl.prepare import prepare
    from eggroll_rl.terminal import quiet_libraries

    quiet_libraries()
    cfg = load_config(recipe, overrides)
    inputs = prepare(cfg)
    tokenizer = AutoTokenizer.from_pretrained(inputs.model_dir)
    lengths = PromptLengths.of(sample_prompts(tokenizer, inputs.train_rows, cfg.data))
    seconds = []
    with TreeMemory() as memory, make_backend(cfg, inputs.model_dir, inputs.targets, prompt_lengths=lengths) as backend:
        def rollout(step: int, members):
            rows = rows_for_step(inputs.train_rows, step, cfg.es.prompts_per_step, cfg.data.shuffle_seed)
            prompts = [prompt_ids(tokenizer, r["question"], cfg.data) for r in rows]
            noise = NoiseSpec(seed=cfg.seed, step=step, sigma=cfg.es.sigma, rank=cfg.es.rank)
            return backend.generate(prompts, cfg.generation, noise, members)

        rollout(0, range(2))  # warm-up: kernels, allocator
        weights = load_tensors(inputs.model_dir, inputs.targets, dtype=torch.float32) if reload else None
        for step in range(repeats):
            t = time.perf_counter()
            rollout(step, range(cfg.es.population))
            seconds.append(time.perf_counter() - t)
            if weights is not None:
                backend.load_weights(weights)
        block = getattr(backend, "engine_kwargs", {}).get("block_size")
    return {"longest": lengths.longest, "shared_prefix": lengths.shared_prefix, "block_size": block,
            "seconds": seconds, "peak_gb": memory.peak / GB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--variant", action="append", default=None, help="|-separated key=value overrides (repeatable)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reload", action="store_true", help="push the unchanged weights after every rollout")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.recipe, json.loads(args.child), args.repeats, args.reload)))
        return
    results = []
    for variant in args.variant or [""]:
        overrides = [o for o in variant.split("|") if o]
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), args.recipe, "--repeats", str(args.repeats),
                              *(["--reload"] if args.reload else []), "--child", json.dumps(overrides)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"variant {variant!r} failed:\n{out.stderr[-3000:]}")
        results.append((variant, json.loads(out.stdout.strip().splitlines()[-1])))
    first = sum(results[0][1]["seconds"]) / len(results[0][1]["seconds"])
    print(f"{args.recipe}: one step's rollout, mean of {args.repeats}" + (", weights reloaded after each" if args.reload else ""))
    print(f"{'longest':>8}{'common':>8}{'block':>7}{'s/rollout':>11}{'ratio':>7}{'peak GB':>9}  {'each rollout (s)':<19} variant")
    for variant, r in results:
        mean = sum(r["seconds"]) / len(r["seconds"])
        each = ",".join(f"{s:.2f}" for s in r["seconds"])
        print(f"{r['longest']:>8}{r['shared_prefix']:>8}{r['block_size'] or '-':>7}{mean:>11.1f}{mean / first:>7.2f}{r['peak_gb']:>9.2f}  {each:<19} {variant or '(recipe)'}")


if __name__ == "__main__":
    main()
