"""Step time with 1 and with K Ray workers at the same total population, and the bytes per step.

    python bench/scaling.py                                  # the quickstart recipe, 1 vs 2 workers, 6 steps
    python bench/scaling.py recipes/tiny.yaml --workers 1,2 --steps 3

Each setting trains the recipe for `--steps` steps in a process of its own (no evals, one final
checkpoint) and the table gives the median seconds per step after the first (engines warm), its
parts (generate, update, push), the bytes that crossed between the trainer and the workers per step
(requests and results, pickled; 0 in one process), and the speed-up over one worker. On one
machine the workers share its cores (each gets its own share), so the speed-up measures how well
K engines of c/K cores do against one engine of c cores, plus the cost of the cluster itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(recipe: str, workers: int, steps: int, overrides: list[str], out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "eggroll-rl"), "train", recipe, *overrides, f"cluster.workers={workers}",
           f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=0", f"output_dir={out}", f"run_name=w{workers}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{workers} worker(s) failed: {result.stderr.strip().splitlines()[-1:]}")
    metrics = [json.loads(line) for line in (out / f"w{workers}" / "metrics.jsonl").read_text().splitlines()][1:]

    def median(key: str) -> float:
        return statistics.median(float(m.get(key, 0.0)) for m in metrics)

    return {"step": median("time/step"), "generate": median("time/generate"), "update": median("time/update"),
            "push": median("time/push"), "bytes": median("cluster/bytes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default="quickstart")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eggroll-scaling-") as tmp:
        results = {k: run(args.recipe, k, args.steps, args.overrides, Path(tmp)) for k in map(int, args.workers.split(","))}
    one = results[min(results)]["step"]
    print(f"{args.recipe} {' '.join(args.overrides)}: median over steps 2..{args.steps}")
    print(f"{'workers':>7} {'s/step':>8} {'generate':>9} {'update':>7} {'push':>6} {'bytes/step':>11} {'speed-up':>9}")
    for k, r in results.items():
        print(f"{k:>7} {r['step']:>8.2f} {r['generate']:>9.2f} {r['update']:>7.2f} {r['push']:>6.2f} {r['bytes']:>11,.0f} {one / r['step']:>8.2f}x")


if __name__ == "__main__":
    main()
