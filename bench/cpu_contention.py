"""vLLM on CPU next to other work: population throughput idle and beside a busy process, per
thread setting.

vLLM's CPU worker pins one OpenMP thread per bound core and spins at barriers, so any other
busy process (the reward workers, the trainer itself, a user's browser) stalls every step. Each
setting below starts a fresh engine in its own process (thread settings are read at start) and
generates the same population batch (N members × P prompts, every row exactly `--tokens` new
tokens) alone, then again beside one `nice` busy process, in one run:

    python bench/cpu_contention.py                      # SmolLM2-135M, the recipe's dtype (auto)
    python bench/cpu_contention.py --settings default,passive

The table gives tokens/s idle and loaded, loaded ÷ idle, and idle ÷ the best idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> environment for the engine process (on top of what set_engine_env defaults).
SETTINGS = {
    "default": {},
    "one-core": {"VLLM_CPU_OMP_THREADS_BIND": "0"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "vllm-auto": {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": ""},
    "reserved-core": {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
}

MEASURE = r"""
import json, sys, time
from transformers import AutoTokenizer
from eggroll_rl.backends import make_backend
from eggroll_rl.config import DataConfig, GenerationConfig, from_dict
from eggroll_rl.data import PromptLengths, prompt_ids
from eggroll_rl.models import resolve_model
from eggroll_rl.noise import NoiseSpec
from eggroll_rl.prepare import model_targets
args = json.loads(sys.argv[1])
cfg = from_dict({"model": args["model"], "backend": "vllm", "dtype": args["dtype"], "data": {"path": "unused"},
                 "es": {"population": args["population"], "rank": 1}})
model_dir = resolve_model(args["model"])
tok = AutoTokenizer.from_pretrained(model_dir)
prompts = [prompt_ids(tok, f"What is {12 + 7 * i} + {5 + 13 * i}?", DataConfig()) for i in range(args["prompts"])]
gen = GenerationConfig(max_new_tokens=args["tokens"], ignore_eos=True)
noise = NoiseSpec(seed=0, step=0, sigma=1e-3, rank=1)
backend = make_backend(cfg, model_dir, model_targets(model_dir, cfg.es.targets), prompt_lengths=PromptLengths.of(prompts))
backend.generate(prompts, gen, noise, range(args["population"]))  # warm-up
print("ready", flush=True)
for line in sys.stdin:  # one measurement per request line
    t = time.perf_counter()
    rollout = backend.generate(prompts, gen, noise, range(args["population"]))
    print(json.dumps({"tokens_per_s": rollout.new_tokens / (time.perf_counter() - t)}), flush=True)
backend.close()
"""


def measure(setting: dict, args: argparse.Namespace) -> tuple[float, float]:
    """(median tokens/s alone, median tokens/s beside a nice busy process) for one setting."""
    env = {**os.environ, **setting}
    env = {k: v for k, v in env.items() if v != ""}
    spec = json.dumps({k: getattr(args, k) for k in ("model", "dtype", "population", "prompts", "tokens")})
    proc = subprocess.Popen([sys.executable, "-c", MEASURE, spec], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while proc.stdout.readline().strip() != "ready":
            if proc.poll() is not None:
                raise RuntimeError(f"engine failed to start for {setting}")

        def run() -> float:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())["tokens_per_s"]

        idle, loaded = [], []
        for _ in range(args.repeats):  # interleaved: machine noise hits both alike
            idle.append(run())
            busy = subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            try:
                loaded.append(run())
            finally:
                busy.kill()
                busy.wait()
        return sorted(idle)[len(idle) // 2], sorted(loaded)[len(loaded) // 2]
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    results = {name: measure(SETTINGS[name], args) for name in args.settings.split(",")}
    best_idle = max(idle for idle, _ in results.values())
    print(f"model={args.model} dtype={args.dtype} rows={args.population}x{args.prompts} tokens={args.tokens} "
          f"cores={os.cpu_count()} background: one `nice -n 10` busy process")
    print(f"{'setting':<14} {'idle tok/s':>10} {'loaded tok/s':>12} {'loaded/idle':>11} {'idle/best idle':>14}")
    for name, (idle, loaded) in results.items():
        print(f"{name:<14} {idle:>10.1f} {loaded:>12.1f} {loaded / idle:>11.2f} {idle / best_idle:>14.2f}")


if __name__ == "__main__":
    main()
