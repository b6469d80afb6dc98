"""Generation throughput of a perturbed population batch vs the same batch unperturbed.

Same backend, same rows (N members × P prompts), one run, measured side by side and
interleaved (perturbed, plain, perturbed, plain, ...) so that machine noise hits both alike.
The last line is the ratio perturbed/plain tokens/s (goal: ≥ 0.9). With the vLLM backend on
CPU, the perturbed rows run twice, interleaved with the rest: through the population products
(vllm_population.py, the backend's default) and through vLLM's own multi-LoRA kernels.

    python bench/population_throughput.py                       # SmolLM2-135M, torch backend
    python bench/population_throughput.py --model tiny-random --population 8
    python bench/population_throughput.py --backend vllm --dtype bfloat16 --population 32
    python bench/population_throughput.py --model DIR --dtype bfloat16 --population 512 --prompts 4 --max-new-tokens 64  # a GPU

On a GPU it also prints the roofline: a bf16 matmul's measured rate over the FLOPs per token.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="the PyTorch backend's static KV cache and compiled decode (auto: on a GPU)")
    args = parser.parse_args()

    from eggroll_rl.backends import make_backend
    from eggroll_rl.config import DataConfig, GenerationConfig, from_dict
    from eggroll_rl.data import PromptLengths, prompt_ids
    from eggroll_rl.models import resolve_model
    from eggroll_rl.noise import NoiseSpec, resolve_generator
    from eggroll_rl.params import checkpoint_shapes, select_targets
    from transformers import AutoTokenizer

    cfg = from_dict({
        "model": args.model, "backend": args.backend, "dtype": args.dtype, "device": args.device, "data": {"path": "unused"},
        "es": {"population": args.population, "rank": args.rank},
        "generation": {"compile": {"true": True, "false": False}.get(args.compile, "auto")},
    })
    model_dir = resolve_model(args.model)
    targets = select_targets(checkpoint_shapes(model_dir), cfg.es.targets)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    questions = [f"What is {a} + {b}? Answer with a number." for a, b in [(12, 7), (31, 45), (8, 9), (120, 33), (5, 66), (14, 14), (70, 2), (9, 99)]]
    prompts = [prompt_ids(tokenizer, q, DataConfig()) for q in questions[: args.prompts]]
    # Every row generates exactly max_new_tokens, so both sides do the same work.
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    backend = make_backend(cfg, model_dir, targets, prompt_lengths=PromptLengths.of(prompts))
    on_gpu = getattr(backend, "device", torch.device("cpu")).type == "cuda"
    noise = NoiseSpec(seed=0, step=0, sigma=1e-3, rank=args.rank, generator=resolve_generator("auto", "cuda" if on_gpu else "cpu"))
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
    if on_gpu:
        peak = matmul_flops_per_s()
        per_token = 2 * matmul_params(model_dir)
        print(f"roofline: {peak / 1e12:.0f} TFLOP/s (a bf16 8192^3 matmul here) / {per_token / 1e9:.2f} GFLOP per token "
              f"= {peak / per_token:.0f} tokens/s; perturbed {tps[default] * per_token / peak:.1%} of it, "
              f"plain {tps['plain'] * per_token / peak:.1%}")


def matmul_flops_per_s(n: int = 8192, repeats: int = 10) -> float:
    """The GPU's bf16 matrix rate, measured: the roofline a decode step's matmuls run against."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def matmul_params(model_dir) -> int:
    """Weights a token's forward pass multiplies by: every 2-D weight but the embedding lookup,
    plus the output head when it is tied to the embedding."""
    import json

    from eggroll_rl.params import checkpoint_shapes

    shapes = checkpoint_shapes(model_dir)
    total = sum(math.prod(s) for name, s in shapes.items() if len(s) == 2 and "embed_tokens" not in name)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("tie_word_embeddings") or "lm_head.weight" not in shapes:
        total += config["vocab_size"] * config["hidden_size"]
    return total


if __name__ == "__main__":
    main()
