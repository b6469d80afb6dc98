"""Naive ES in vLLM vs the EGGROLL population backend: same members, same prompts, timed.

Naive: for every member m, write W + E_m (dense) into the engine with ``load_weights``, generate
the base model, and restore W at the end — one weight reload and one small generate call per
member. EGGROLL (VLLMBackend.generate): all members are LoRA adapters of one engine and all
(member, prompt) rows go in ONE generate call.

Also reports how often the greedy completions of both routes agree (they compute the same
W + E_m, rounded differently: dense W + E_m vs W·x + lora_B·(lora_A·x)).

    python bench/naive_es_baseline.py --model ~/.cache/eggroll-rl/models/smollm2-135m-instruct \
        --population 64 --prompts 4 --max-new-tokens 32 --dtype bfloat16

The last line is the speedup (naive seconds / EGGROLL seconds) of the run.

Without --model it builds the tiny random model (a smoke test, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "What is 17 * 23?",
    "Name three prime numbers.",
    "Explain gravity in one sentence.",
    "Write a haiku about rain.",
    "What is the capital of France?",
    "What is the sum of the numbers from 1 to 10?",
    "Define entropy briefly.",
    "Is 91 a prime number?",
]
TARGETS = [r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="HF model folder (default: a tiny random model)")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--sigma", type=float, default=1e-3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--json", default="", help="also write the summary here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from transformers import AutoTokenizer

    from eggroll_rl.backends.vllm_backend import VLLMBackend
    from eggroll_rl.config import GenerationConfig
    from eggroll_rl.noise import NoiseSpec
    from eggroll_rl.params import checkpoint_shapes, load_tensors, select_targets

    tmp = None
    model = args.model
    if not model:
        from eggroll_rl.tiny_model import build_tiny_model

        tmp = tempfile.TemporaryDirectory()
        model = str(build_tiny_model(Path(tmp.name) / "tiny"))
        args.sigma = max(args.sigma, 0.1)
        args.max_model_len = min(args.max_model_len, 512)
    tok = AutoTokenizer.from_pretrained(model)
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False)
        for q in questions
    ]
    targets = select_targets(checkpoint_shapes(model), TARGETS)
    base = load_tensors(model, targets, dtype=torch.float32)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
    noise = NoiseSpec(seed=0, step=0, sigma=args.sigma, rank=args.rank)
    members = list(range(args.population))
    out: dict = {"model": model, "population": args.population, "rank": args.rank, "sigma": args.sigma,
                 "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
                 "targets": len(targets), "target_params": sum(w.numel() for w in base.values())}

    t0 = time.perf_counter()
    with VLLMBackend(model, targets, rank=args.rank, population=args.population, dtype=args.dtype,
                     engine_options={"max_model_len": args.max_model_len}) as be:
        out["engine_start_s"] = round(time.perf_counter() - t0, 2)
        be.generate(prompts, gen)  # warm-up

        t = time.perf_counter()
        eggroll = be.generate(prompts, gen, noise, members)
        out["eggroll"] = {"seconds": round(time.perf_counter() - t, 2), "new_tokens": eggroll.new_tokens,
                          "adapter_build_s": round(be.last_adapter_seconds, 3)}

        t = time.perf_counter()
        naive_texts, naive_tokens, reload_s = [], 0, 0.0
        for m in members:
            dense = {n: w + noise.perturbation(m, n, tuple(w.shape)) for n, w in base.items()}
            t1 = time.perf_counter()
            be.load_weights(dense)
            reload_s += time.perf_counter() - t1
            roll = be.generate(prompts, gen)
            naive_texts.append(roll.texts[0])
            naive_tokens += roll.new_tokens
        t1 = time.perf_counter()
        be.load_weights(base)
        reload_s += time.perf_counter() - t1
        out["naive"] = {"seconds": round(time.perf_counter() - t, 2), "new_tokens": naive_tokens,
                        "reload_s": round(reload_s, 2), "reloads": len(members) + 1}

    pairs = [(a[0], b[0]) for ma, mb in zip(eggroll.texts, naive_texts) for a, b in zip(ma, mb)]
    out["greedy_agreement"] = round(sum(a == b for a, b in pairs) / len(pairs), 3)
    out["speedup"] = round(out["naive"]["seconds"] / max(out["eggroll"]["seconds"], 1e-9), 2)
    print(json.dumps(out, indent=2))
    print(f"N={args.population}: naive {out['naive']['seconds']} s, EGGROLL {out['eggroll']['seconds']} s "
          f"-> EGGROLL is {out['speedup']}x faster per step")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
