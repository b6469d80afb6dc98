"""The GPU check: offline, on one GPU, in one 10-minute window; prints one table.

    python bench/gpu_check.py                    # on a GPU machine set up by scripts/setup.sh
    bash bench/gpu_check.sh                      # on a machine with no package index (see there)
    python bench/gpu_check.py --only bench-1.7b,train-1.7b

Builds random-weight Llama models in real shapes (SmolLM2-1.7B's, Llama-3-8B's) with SmolLM2's
tokenizer: their answers mean nothing, their speed and memory are real. Then, in this order,
each part in a process of its own, skipped when the time left (--minutes) is too short for it:

  tests       the PyTorch backend, noise, ES and trainer tests on the GPU (EGGROLL_TEST_DEVICE=cuda)
  bench-1.7b  bench/population_throughput.py, 512 members x 4 prompts x 64 tokens: perturbed
              and plain tokens/s side by side, and the fraction of the roofline
  train-1.7b  `eggroll-rl train`, 128 members x 8 prompts x 64 tokens: the step's parts
  bench-8b    the same bench, 64 members x 8 prompts
  train-8b    full-parameter EGGROLL on the 8B shape: peak GPU memory and step time
  grpo-8b     TRL's GRPOTrainer, full fine-tune of the same 8B model: its peak, or its OOM

Writes OUT/gpu_check.json and OUT/gpu_check.md (the table, the machine, the commit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# hidden, intermediate, layers, heads, KV heads, tied embeddings
SHAPES = {"1.7b": (2048, 8192, 24, 32, 32, True), "8b": (4096, 14336, 32, 32, 8, False)}
# Seconds each part needs at least (a compile and its CUDA graphs included); skipped below that.
PARTS = {"tests": 150, "bench-1.7b": 100, "train-1.7b": 90, "bench-8b": 100, "train-8b": 110, "grpo-8b": 90}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "config.json")


def build_model(size: str, dest: Path, tokenizer_dir: Path) -> float:
    """A random-weight Llama of `size`'s shape in bf16, built on the GPU; returns its parameters (B)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv_heads, tied = SHAPES[size]
    config = AutoConfig.from_pretrained(tokenizer_dir)
    config.update({"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
                   "tie_word_embeddings": tied})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in TOKENIZER_FILES[:-1]:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    del model
    torch.cuda.empty_cache()
    return params


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """(exit code, output) of a child process; 124 and what it printed when it outlives `timeout`."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return 124, out.decode(errors="replace") if isinstance(out, bytes) else out


def number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1).replace(",", "")) if match else None


def part_tests(args) -> dict:
    files = ["tests/integration/test_torch_backend.py", "tests/unit/test_es.py", "tests/unit/test_noise.py",
             "tests/integration/test_train.py"]
    code, out = run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                    args.timeout, {"EGGROLL_TEST_DEVICE": "cuda"})
    summary = (re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", out, re.M) or [f"exit {code}"])[-1]
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"summary": summary, "failed": failed, "ok": code == 0, "tail": out[-3000:] if code else ""}


def bench(args, model: Path, population: int, prompts: int, compiled: bool = True) -> dict:
    """The throughput bench; if the compiled decode fails, once more without it (a figure, and
    the failure kept), so that one window always gives numbers."""
    code, out = run([sys.executable, str(ROOT / "bench" / "population_throughput.py"), "--model", str(model),
                     "--dtype", "bfloat16", "--population", str(population), "--prompts", str(prompts),
                     "--max-new-tokens", "64", "--repeats", "2", "--compile", "auto" if compiled else "false"], args.timeout)
    if code and compiled:
        return {**bench(args, model, population, prompts, compiled=False), "compiled_failure": out[-3000:]}
    result = {
        "rows": population * prompts,
        "perturbed_tokens_per_s": number(r"perturbed: .* = ([\d.]+) tokens/s", out),
        "plain_tokens_per_s": number(r"plain: .* = ([\d.]+) tokens/s", out),
        "ratio": number(r"ratio perturbed/plain tokens/s: ([\d.]+)", out),
        "roofline_tokens_per_s": number(r"= ([\d.]+) tokens/s; perturbed", out),
        "perturbed_roofline_share": number(r"perturbed ([\d.]+)% of it", out),
        "ok": code == 0,
        "compiled": compiled,
    }
    if code:
        result["tail"] = out[-3000:]
    return result


def train(args, model: Path, name: str, population: int, prompts: int, steps: int, extra: list[str] = ()) -> dict:
    """`eggroll-rl train` on `model`; the median of each timed part over the steps after the first
    (the first compiles the decode step and captures its CUDA graphs)."""
    out_dir = args.work / "runs"
    shutil.rmtree(out_dir / name, ignore_errors=True)
    cmd = [sys.executable, "-P", "-c", "from eggroll_rl.cli import app; app()", "train", str(ROOT / "recipes" / "tiny.yaml"),
           f"model={model}", f"data.path={ROOT / 'recipes' / 'data' / 'gsm8k_mini.jsonl'}", "data.eval_size=0",
           "dtype=bfloat16", "device=cuda", "backend=torch", "rewards=[digit_fraction]",
           "generation.max_new_tokens=64", "generation.ignore_eos=true", "generation.temperature=0",
           f"es.population={population}", f"es.prompts_per_step={prompts}", "es.sigma=0.001", "es.lr=0.001",
           f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=0", "train.final_checkpoint=false",
           f"output_dir={out_dir}", f"run_name={name}", *extra]
    code, out = run(cmd, args.timeout)
    metrics_file = out_dir / name / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.is_file() else []
    result = {"ok": code == 0, "steps": len(metrics), "population": population, "prompts": prompts}
    later = metrics[1:] or metrics
    if later:
        med = {k: statistics.median(m[k] for m in later) for k in
               ("time/step", "time/generate", "time/population_setup", "time/update", "time/push", "tokens_per_s")}
        result.update({k.replace("time/", "") + ("_s" if k.startswith("time/") else ""): v for k, v in med.items()})
        result["first_step_s"] = metrics[0]["time/step"]
        result["bookkeeping_share"] = (med["time/population_setup"] + med["time/update"] + med["time/push"]) / med["time/step"]
        result["gpu_peak_gb"] = max(m.get("memory/gpu_peak_gb", 0.0) for m in metrics)
        result["rss_peak_gb"] = max(m["memory/peak_rss_gb"] for m in metrics)
    if code:
        result["tail"] = out[-3000:]
    return result


def grpo_child(spec: dict) -> None:
    """TRL's GRPOTrainer, full fine-tune of spec["model"] on the GPU, as a user runs it (TRL's
    defaults); writes its peak GPU memory and step time, or the out-of-memory error, to spec["out"]."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from eggroll_rl.rewards import get_reward

    rows = [json.loads(line) for line in (ROOT / "recipes" / "data" / "gsm8k_mini.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}]} for r in rows])
    config = GRPOConfig(output_dir=str(Path(spec["out"]).parent / "grpo"), max_steps=spec["steps"],
                        per_device_train_batch_size=spec["generations"], num_generations=spec["generations"],
                        max_completion_length=64, save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True)
    result = {"generations": spec["generations"], "steps": spec["steps"]}
    try:
        trainer = GRPOTrainer(model=spec["model"], reward_funcs=[get_reward("digit_fraction")], args=config,
                              train_dataset=dataset, processing_class=tokenizer)
        t = time.perf_counter()
        trainer.train()
        result.update(ok=True, seconds_per_step=(time.perf_counter() - t) / spec["steps"])
    except torch.OutOfMemoryError as exc:
        result.update(ok=False, oom=str(exc).strip().splitlines()[0])
    result["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    Path(spec["out"]).write_text(json.dumps(result))


def grpo(args, model: Path) -> dict:
    out = args.work / "grpo.json"
    out.unlink(missing_ok=True)
    spec = {"model": str(model), "generations": 8, "steps": 2, "out": str(out)}
    code, text = run([sys.executable, "-P", str(Path(__file__).resolve()), "--grpo-child", json.dumps(spec)], args.timeout)
    result = json.loads(out.read_text()) if out.is_file() else {"ok": False}
    if not out.is_file():
        result["tail"] = text[-3000:]
    return result


def machine() -> dict:
    import torch
    import transformers

    props = torch.cuda.get_device_properties(0)
    commit = os.environ.get("EGGROLL_COMMIT")
    if not commit:
        code, out = run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], 10)
        commit = out.strip() if code == 0 else "unknown"
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": commit, "date": time.strftime("%Y-%m-%d")}


def fmt(value, spec: str = ".0f", missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def table(results: dict) -> str:
    """The check as one markdown table: what was measured, the figure, the target."""
    rows = []
    done = {name: r for name, r in results.items() if isinstance(r, dict)}
    if "tests" in done:
        t = done["tests"]
        rows.append(("CUDA tests (backend, noise, ES, trainer)", t["summary"], "0 failing"))
    for size, pop, prompts in (("1.7b", 512, 4), ("8b", 64, 8)):
        b = done.get(f"bench-{size}")
        if b:
            eager = "" if b.get("compiled", True) else " (eager: the compiled decode FAILED, see the JSON)"
            rows.append((f"perturbed / plain tokens/s, {size.upper()} {pop} x {prompts} x 64{eager}",
                         f"{fmt(b['perturbed_tokens_per_s'], ',.0f')} / {fmt(b['plain_tokens_per_s'], ',.0f')} = **{fmt(b['ratio'], '.3f')}**",
                         ">= 0.90" + (", perturbed >= 50,000 tok/s" if size == "1.7b" else "")))
            if b.get("perturbed_roofline_share") is not None:
                rows.append((f"perturbed share of the roofline, {size.upper()}",
                             f"{b['perturbed_roofline_share']:.1f}% of {fmt(b['roofline_tokens_per_s'], ',.0f')} tok/s", ""))
    tr = done.get("train-1.7b")
    if tr and "step_s" in tr:
        rows.append(("`eggroll-rl train` 1.7B, 128 x 8 x 64: step (median after the first)",
                     f"{tr['step_s']:.2f} s: generate {tr['generate_s']:.2f} (setup {tr['population_setup_s']:.3f}), "
                     f"update {tr['update_s']:.3f}, push {tr['push_s']:.3f}; first step {tr['first_step_s']:.1f} s", ""))
        rows.append(("population setup + update + push, share of the step", f"**{tr['bookkeeping_share']:.1%}**", "<= 5%"))
        rows.append(("GPU peak / process RSS, 1.7B training", f"{tr['gpu_peak_gb']:.1f} GB / {tr['rss_peak_gb']:.1f} GB", ""))
    t8, g8 = done.get("train-8b"), done.get("grpo-8b")
    if t8 and "step_s" in t8:
        rows.append((f"EGGROLL full-parameter, 8B, {t8['population']} x {t8['prompts']} x 64: GPU peak, s/step",
                     f"**{t8['gpu_peak_gb']:.1f} GB**, {t8['step_s']:.2f} s", ""))
    if g8:
        what = (f"**{g8['gpu_peak_gb']:.1f} GB**, {g8['seconds_per_step']:.2f} s" if g8.get("ok")
                else f"out of memory at {g8.get('gpu_peak_gb', 0):.1f} GB: {g8.get('oom', 'failed')}")
        rows.append((f"TRL GRPOTrainer full fine-tune, 8B, {g8.get('generations', 8)} completions x 64: GPU peak, s/step", what, ""))
    for name, r in results.items():
        if r == "skipped":
            rows.append((f"{name}: not run", "too little time left in the window", ""))
        elif isinstance(r, dict) and not r.get("ok", True) and "oom" not in r:
            last = ((r.get("tail") or "").strip().splitlines() or ["failed, no output"])[-1]
            rows.append((f"{name}: FAILED", last[:200].replace("|", "/"), ""))
    lines = ["| what | measured | target |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a folder with SmolLM2's tokenizer and config (default: the bundled model's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/eggroll-gpu-check"), help="models and runs (~25 GB)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "bench" / "results")))
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--minutes", type=float, default=9.5, help="the window: parts that would not fit are skipped")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per part at most")
    parser.add_argument("--grpo-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpo_child:
        return grpo_child(json.loads(args.grpo_child))

    start = time.perf_counter()
    tokenizer = args.tokenizer
    if tokenizer is None:
        from eggroll_rl.models import resolve_model

        tokenizer = resolve_model("smollm2-135m-instruct")
    wanted = [p for p in PARTS if p in args.only.split(",")]
    results: dict = {"machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {}

    def model(size: str) -> Path:
        """The random-weight model of `size`, built the first time a part needs it."""
        if size not in models:
            dest, t = args.work / size, time.perf_counter()
            if not (dest / "config.json").is_file():
                params = build_model(size, dest, tokenizer)
                print(f"model {size}: {params:.2f}B parameters, built in {time.perf_counter() - t:.0f} s", flush=True)
            models[size] = dest
        return models[size]

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        text = table(results)
        m = results["machine"]
        (args.out / "gpu_check.md").write_text(f"GPU check on {m['gpu']} ({m['gpu_memory_gb']} GB), torch {m['torch']}, "
                                               f"transformers {m['transformers']}, commit {m['commit']}, {m['date']}\n\n{text}\n")
        print(text, flush=True)

    jobs = {
        "tests": lambda: part_tests(args),
        "bench-1.7b": lambda: bench(args, model("1.7b"), 512, 4),
        "train-1.7b": lambda: train(args, model("1.7b"), "train-1.7b", 128, 8, steps=5),
        "bench-8b": lambda: bench(args, model("8b"), 64, 8),
        "train-8b": lambda: train(args, model("8b"), "train-8b", 64, 8, steps=3),
        "grpo-8b": lambda: grpo(args, model("8b")),
    }
    for part in wanted:
        left = args.minutes * 60 - (time.perf_counter() - start)
        if left < PARTS[part]:
            results[part] = "skipped"
            continue
        t = time.perf_counter()
        print(f"--- {part} ({left:.0f} s left)", flush=True)
        args.timeout = min(args.timeout, left - 10)
        results[part] = jobs[part]()
        results[part]["seconds"] = round(time.perf_counter() - t, 1)
        save()
    save()


if __name__ == "__main__":
    main()
