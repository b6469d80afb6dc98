"""ES bookkeeping per step, by part: drawing the noise, the update of the fp32 master copy.

Side by side in one run on the same matrices (SmolLM2-135M's 210 targets by default, random
values): the update as `es.tell` does it (low-rank factors, one fused `addmm_` per matrix for
SGD, norms from Gram matrices) against the dense reference it replaced (ĝ materialized, then
scaled, then added; norms in float64). Both after a cold and a warm noise cache (a step's rollout
draws the factors first, so the update normally finds them cached).

    python bench/es_update.py                       # N=32 and N=64, SGD
    python bench/es_update.py --optimizer adam
    python bench/es_update.py --noise philox-torch --device cuda --populations 128,1024
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from eggroll_rl.noise import clear_cache
from eggroll_rl.config import ESConfig
from eggroll_rl.es import EggrollES, gradient_estimate
from eggroll_rl.models import resolve_model
from eggroll_rl.params import checkpoint_shapes, select_targets


def dense_reference(es: EggrollES, step: int, fitness: torch.Tensor, master: dict[str, torch.Tensor]) -> None:
    """The update as it was before: dense ĝ, a scaled copy, an add, float64 norms (SGD)."""
    noise, lr = es.ask(step), es.lr_at(step)
    for name, weight in master.items():
        grad = gradient_estimate(noise, fitness, name, tuple(weight.shape))
        delta = grad * lr
        weight.add_(delta)
        float(delta.double().pow(2).sum()), float(grad.double().pow(2).sum())


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that the times are the work's."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--populations", default="32,64")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", default="philox-numpy", choices=["philox-numpy", "philox-torch"])
    parser.add_argument("--device", default="cpu", help="where the master copy lives (cpu, cuda)")
    args = parser.parse_args()

    shapes = checkpoint_shapes(resolve_model(args.model))
    targets = select_targets(shapes, ESConfig().targets)
    master = {name: torch.randn(shapes[name], device=args.device) for name in targets}
    params = sum(w.numel() for w in master.values())
    print(f"model={args.model}: {len(targets)} target matrices, {params / 1e6:.1f}M parameters, "
          f"optimizer={args.optimizer}, noise={args.noise} on {args.device}, torch threads={torch.get_num_threads()}")
    for population in map(int, args.populations.split(",")):
        es = EggrollES(ESConfig(population=population, rank=1, lr=1e-3, optimizer=args.optimizer, noise=args.noise),
                       seed=0, total_steps=100)
        fitness = torch.randn(population, dtype=torch.float64)
        times: dict[str, list[float]] = {k: [] for k in ("noise (cold)", "tell (cold noise)", "tell (warm noise)", "dense reference (warm noise)")}
        for step in range(args.repeats):
            noise = es.ask(step)
            clear_cache()
            t0 = time.perf_counter()
            for _ in noise.draw(range(population // 2), {name: shapes[name] for name in targets}, args.device):
                pass
            synchronize(args.device)
            times["noise (cold)"].append(time.perf_counter() - t0)
            for label, warm in (("tell (cold noise)", False), ("tell (warm noise)", True)):
                if not warm:
                    clear_cache()
                t0 = time.perf_counter()
                es.tell(step, fitness, master)
                synchronize(args.device)
                times[label].append(time.perf_counter() - t0)
            if args.optimizer == "sgd" and args.device == "cpu":
                t0 = time.perf_counter()
                dense_reference(es, step, fitness, master)
                times["dense reference (warm noise)"].append(time.perf_counter() - t0)
        print(f"N={population}:")
        for label, values in times.items():
            if values:
                print(f"  {label:<30} {statistics.median(values):.3f} s (median of {len(values)})")
        if times["dense reference (warm noise)"]:
            ratio = statistics.median(times["dense reference (warm noise)"]) / statistics.median(times["tell (warm noise)"])
            print(f"  tell speed-up over the dense reference: {ratio:.1f}x")
        assert all(math.isfinite(float(w.abs().max())) for w in master.values())


if __name__ == "__main__":
    main()
