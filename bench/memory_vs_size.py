"""Peak memory of EGGROLL and of GRPO as the model grows: SmolLM2-135M, then random weights in
the shapes of larger SmolLM2 models.

    python bench/memory_vs_size.py                                   # 135m and 360m, 3 minutes each
    python bench/memory_vs_size.py --sizes 135m,360m --minutes 2     # the figures in docs/results.md

For each size this runs `bench/vs_grpo.py` on the quickstart recipe with `model=` that size (both
methods, the same minutes of training, validation rows) and keeps what its summary measured: the
peak memory of each method's whole process tree and its seconds per step. 135m is the bundled
model; the others are its architecture and tokenizer with the layer sizes of SmolLM2-360M and
SmolLM2-1.7B and random weights (nothing can be downloaded here), so their accuracy means nothing
and their completions run to the length cap: memory and step time are what they measure. A short
run understates EGGROLL's peak: its RSS grows for its first ~20 steps (135M on an AMD EPYC family
26: 3.77 GB after 2 minutes, 4.34 GB over 15).

Why it exists: at 135M both methods' footprints are mostly runtime (an inference engine, PyTorch),
and per parameter EGGROLL keeps ~6 bytes (bf16 engine weights, an fp32 master of the perturbed
matrices) against a full fine-tune's ~16 (fp32 weights, gradients, two Adam moments) plus
activations; this measures where that starts to show.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (hidden, intermediate, layers, attention heads, kv heads) of the SmolLM2 family (head_dim 64).
SHAPES = {"360m": (960, 2560, 32, 15, 5), "1.7b": (2048, 8192, 24, 32, 32)}


def random_model(base: Path, size: str, dest: Path) -> Path:
    """`base`'s config and tokenizer with SHAPES[size] and random (default-init) fp32 weights."""
    if (dest / "model.safetensors").exists():
        return dest
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from eggroll_rl.params import copy_model_files

    hidden, intermediate, layers, heads, kv_heads = SHAPES[size]
    config = AutoConfig.from_pretrained(base)
    config.update({"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads})
    dest.mkdir(parents=True, exist_ok=True)
    copy_model_files(base, dest)  # tokenizer, chat template; the config is written over next
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="135m,360m", help=f"comma-separated: 135m, {', '.join(SHAPES)}")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of training per method and size")
    parser.add_argument("--recipe", default=str(HERE.parent / "recipes" / "quickstart.yaml"))
    parser.add_argument("--out", default=None, help="default: outputs/memory_vs_size-<date>-<time>")
    args = parser.parse_args()

    from eggroll_rl.models import resolve_model

    out = Path(args.out or f"outputs/memory_vs_size-{time.strftime('%Y%m%d-%H%M%S')}")
    sizes = args.sizes.split(",")
    for size in sizes:
        if size != "135m" and size not in SHAPES:
            raise SystemExit(f"--sizes: unknown size {size!r}; use 135m or one of {', '.join(SHAPES)}")
        if (out / size).exists():
            raise SystemExit(f"{out / size} already exists (a run of that size); pass another --out")
    base = resolve_model("smollm2-135m-instruct")
    rows = []
    for size in sizes:
        model = base if size == "135m" else random_model(base, size, out / "models" / size)
        run_out = out / size
        result = subprocess.run([sys.executable, str(HERE / "vs_grpo.py"), args.recipe, f"model={model}",
                                 "--minutes", str(args.minutes), "--marks", str(args.minutes), "--split", "validation",
                                 "--grpo-lr", "1e-5", "--out", str(run_out)])
        if result.returncode != 0:
            raise SystemExit(f"bench/vs_grpo.py failed on size {size} (exit {result.returncode}); its logs are in {run_out}")
        summary = json.loads((run_out / "summary.json").read_text())
        methods = summary["methods"]
        eggroll = next(v for k, v in methods.items() if k.startswith("eggroll"))
        grpo = next(v for k, v in methods.items() if k.startswith("grpo"))
        rows.append({"size": size, "machine": summary["machine"],
                     "eggroll": {k: eggroll[k] for k in ("peak_rss_gb", "s_per_step", "steps")},
                     "grpo": {k: grpo[k] for k in ("peak_rss_gb", "s_per_step", "steps")}})
        (out / "summary.json").write_text(json.dumps(rows, indent=2))

    print(f"{'size':>6} {'EGGROLL GB':>11} {'GRPO GB':>8} {'ratio':>6} {'EGGROLL s/step':>15} {'GRPO s/step':>12}")
    for r in rows:
        e, g = r["eggroll"], r["grpo"]
        print(f"{r['size']:>6} {e['peak_rss_gb']:>11.2f} {g['peak_rss_gb']:>8.2f} {e['peak_rss_gb'] / g['peak_rss_gb']:>6.2f} "
              f"{e['s_per_step']:>15.1f} {g['s_per_step']:>12.1f}")
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
