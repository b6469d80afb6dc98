"""Generation throughput of a perturbed population batch vs the same batch unperturbed.

Same backend, same rows (N members × P prompts), one run, measured side by side and
interleaved (perturbed, plain, perturbed, plain, ...) so that machine noise hits both alike.
The last line is the ratio perturbed/plain tokens/s (goal: ≥ 0.9). With the vLLM backend on
CPU, the perturbed rows run twice, interleaved with the rest: through the population products
(vllm_population.py, the backend's default) and through vLLM's own multi-LoRA kernels.

    python bench/population_throughput.py                       # SmolLM2-135M, torch backend
    python bench/population_throughput.py --model tiny-random --population 8
    python bench/population_throughput.py --backend vllm --dtype bfloat16 --population 32
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default="torch", choices=["torch", "vllm"])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from eggroll_rl.backends import make_backend
    from eggroll_rl.config import DataConfig, GenerationConfig, from_dict
    from eggroll_rl.data import prompt_ids
    from eggroll_rl.models import resolve_model
    from eggroll_rl.noise import NoiseSpec
    from eggroll_rl.params import checkpoint_shapes, select_targets
    from transformers import AutoTokenizer

    cfg = from_dict({
        "model": args.model, "backend": args.backend, "dtype": args.dtype, "data": {"path": "unused"},
        "es": {"population": args.population, "rank": args.rank},
    })
    model_dir = resolve_model(args.model)
    targets = select_targets(checkpoint_shapes(model_dir), cfg.es.targets)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    questions = [f"What is {a} + {b}? Answer with a number." for a, b in [(12, 7), (31, 45), (8, 9), (120, 33), (5, 66), (14, 14), (70, 2), (9, 99)]]
    prompts = [prompt_ids(tokenizer, q, DataConfig()) for q in questions[: args.prompts]]
    # Every row generates exactly max_new_tokens, so both sides do the same work.
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    noise = NoiseSpec(seed=0, step=0, sigma=1e-3, rank=args.rank)

    backend = make_backend(cfg, model_dir, targets)
    try:
        def perturbed():
            return backend.generate(prompts, gen, noise, range(args.population))

        def plain():  # the same rows, every member replaced by the unperturbed model
            return backend.generate(prompts * args.population, gen)

        def vllm_kernels():  # perturbed, through vLLM's own multi-LoRA kernels
            backend.use_population_products(False)
            try:
                return perturbed()
            finally:
                backend.use_population_products(True)

        runs, default = {"perturbed": perturbed, "plain": plain}, "perturbed"
        if getattr(backend, "population_products", False):  # vLLM on CPU: both LoRA paths
            runs, default = {"products": perturbed, "vllm-lora": vllm_kernels, "plain": plain}, "products"
        for fn in runs.values():  # warm-up
            fn()
        totals = {name: [0, 0.0] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                rollout = fn()
                totals[name][0] += rollout.new_tokens
                totals[name][1] += time.perf_counter() - t
    finally:
        backend.close()

    rows = args.population * len(prompts)
    print(f"backend={args.backend} model={args.model} rows={rows} (N={args.population} x P={len(prompts)}) "
          f"rank={args.rank} max_new_tokens={args.max_new_tokens} dtype={args.dtype}")
    tps = {}
    for name, (tokens, seconds) in totals.items():
        tps[name] = tokens / seconds
        print(f"{name:>9}: {tokens} tokens in {seconds:.2f} s = {tps[name]:.1f} tokens/s")
    for name in runs:
        if name not in ("plain", default):
            print(f"ratio {name}/plain tokens/s: {tps[name] / tps['plain']:.3f}")
    print(f"ratio perturbed/plain tokens/s: {tps[default] / tps['plain']:.3f}" + (f" ({default})" if default != "perturbed" else ""))


if __name__ == "__main__":
    main()
