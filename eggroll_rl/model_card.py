"""The model card (README.md with Hub metadata) and training-curve plot of an exported run.

Everything here is read from the run directory (config.yaml, metrics.jsonl, eval.jsonl,
fitness.jsonl) and the base model folder; nothing is invented. The licence is inherited from the
base model: its README metadata when the folder has one, else the licence our alias conversion
recorded (eggroll_source.json), else a small table of known model families, else 'other'.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PLOT_FILE = "training_curves.png"
BASE_TAGS = ["eggroll", "evolution-strategies", "eggroll-rl", "low-rank-perturbations"]

# Aliases of models.py -> the Hub id of the model they are built from.
ALIAS_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# Licences of well-known families, matched (first hit wins) against the base model's Hub id,
# alias and folder name, lower-cased. Exceptions precede their family.
KNOWN_LICENSES: list[tuple[str, str]] = [
    (r"smollm", "apache-2.0"),
    (r"qwen2\.5-(3b|72b)", "other"),  # Qwen research / Qwen licence
    (r"qwen2\.5|qwen3|qwen2-", "apache-2.0"),
    (r"tinyllama", "apache-2.0"),
    (r"mistral-7b|mixtral", "apache-2.0"),
    (r"olmo", "apache-2.0"),
    (r"pythia|gpt-neox", "apache-2.0"),
    (r"phi-?[234]", "mit"),
    (r"llama-?3\.3", "llama3.3"),
    (r"llama-?3\.2", "llama3.2"),
    (r"llama-?3\.1", "llama3.1"),
    (r"llama-?3", "llama3"),
    (r"llama-?2", "llama2"),
    (r"gemma", "gemma"),
    (r"gpt2|distilgpt2", "mit"),
]


@dataclass
class CardInputs:
    """What the card is made of; `card_inputs` fills it from a run directory."""

    cfg: Any  # RecipeConfig
    step: int  # updates in the exported weights
    total_steps: int  # steps the run has logged
    base_model_dir: Path
    source: str  # "checkpoint" or "replay"
    metrics: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    repo_id: str | None = None
    model_name: str = "model"
    weights_bytes: int = 0
    fitness_log_bytes: int = 0
    checkpoint_bytes: int = 0
    weights_dtype: str = ""


# ----------------------------------------------------------------------------------------
# Base model identity and licence


def front_matter(readme: str) -> dict:
    """The YAML metadata block at the top of a README ({} when there is none or it is invalid)."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", readme, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def hub_id_from_path(path: Path) -> str | None:
    """`.../models--org--name/snapshots/<sha>` (a hub cache snapshot) -> 'org/name'."""
    for part in reversed(Path(path).parts):
        m = re.fullmatch(r"models--([^-].*?)--(.+)", part)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def base_model_id(model_spec: str, base_model_dir: Path) -> str | None:
    """The Hub id of the base model, when it has one (None for local and random models)."""
    spec = str(model_spec).strip()
    if spec.lower() in ALIAS_HUB_IDS:
        return ALIAS_HUB_IDS[spec.lower()]
    if _HUB_ID.fullmatch(spec) and not Path(spec).expanduser().exists():
        return spec
    return hub_id_from_path(base_model_dir)


def resolve_license(base_model_dir: Path, names: list[str]) -> tuple[str, str, dict]:
    """(licence id, where it came from, extra metadata such as license_name/license_link)."""
    base_model_dir = Path(base_model_dir)
    readme = base_model_dir / "README.md"
    if readme.is_file():
        meta = front_matter(readme.read_text(errors="replace"))
        lic = meta.get("license")
        if isinstance(lic, list):
            lic = lic[0] if lic else None
        if isinstance(lic, str) and lic.strip():
            extra = {k: meta[k] for k in ("license_name", "license_link") if isinstance(meta.get(k), str)}
            return lic.strip(), "the base model's README metadata", extra
    source = base_model_dir / "eggroll_source.json"
    if source.is_file():
        try:
            lic = json.loads(source.read_text()).get("license")
        except (OSError, json.JSONDecodeError, AttributeError):
            lic = None
        if isinstance(lic, str) and lic.strip():
            return lic.strip(), "the base model's conversion record (eggroll_source.json)", {}
    for name in names:
        low = str(name or "").lower()
        if not low:
            continue
        for pattern, lic in KNOWN_LICENSES:
            if re.search(pattern, low):
                return lic, f"the known licence of '{name}'", {}
    return "other", "unknown: no licence found for the base model; check it before sharing", {}


# ----------------------------------------------------------------------------------------
# Plot


def plot_training_curves(metrics: list[dict], evals: list[dict], path: Path, step: int | None = None) -> Path:
    """Train reward (per step) and eval accuracy / reward (per eval) as a PNG, Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)

    steps = [m["step"] for m in metrics if isinstance(m.get("reward_mean"), (int, float))]
    rewards = [m["reward_mean"] for m in metrics if isinstance(m.get("reward_mean"), (int, float))]
    if steps:
        top.plot(steps, rewards, color="tab:blue", lw=1, alpha=0.5 if len(steps) > 20 else 1.0,
                 marker="o" if len(steps) <= 20 else None, ms=3, label="population mean reward")
        if len(steps) > 20:
            w = max(5, len(steps) // 20)
            smooth = [sum(rewards[max(0, i - w + 1): i + 1]) / len(rewards[max(0, i - w + 1): i + 1]) for i in range(len(rewards))]
            top.plot(steps, smooth, color="tab:blue", lw=2, label=f"moving mean ({w} steps)")
        top.legend(loc="best", fontsize=8)
    else:
        top.text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("train reward")
    top.set_title("EGGROLL training")
    top.grid(alpha=0.3)

    ev = [e for e in evals if isinstance(e.get("accuracy"), (int, float))]
    if ev:
        xs = [e["step"] for e in ev]
        acc = [e["accuracy"] for e in ev]
        bottom.plot(xs, acc, color="tab:green", marker="o", label="eval accuracy")
        if all(isinstance(e.get("ci_low"), (int, float)) and isinstance(e.get("ci_high"), (int, float)) for e in ev):
            bottom.fill_between(xs, [e["ci_low"] for e in ev], [e["ci_high"] for e in ev], color="tab:green", alpha=0.15, label="95% CI")
        er = [(e["step"], e["reward_mean"]) for e in ev if isinstance(e.get("reward_mean"), (int, float))]
        if er:
            bottom.plot([s for s, _ in er], [r for _, r in er], color="tab:orange", marker="s", ls="--", label="eval mean reward")
        bottom.legend(loc="best", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no evaluations in this run", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("held-out eval")
    bottom.set_xlabel("step (updates)")
    bottom.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = max([*steps, *(e["step"] for e in ev)], default=None)
    if step is not None and last is not None and step < last:  # an earlier step than the run's last
        for ax in (top, bottom):
            ax.axvline(step, color="gray", ls=":", lw=1, label=None)
        top.text(step, 1.0, f" exported: step {step}", transform=top.get_xaxis_transform(), va="top", fontsize=8, color="gray")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return Path(path)


# ----------------------------------------------------------------------------------------
# Card


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable


def human_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _cell(v: Any) -> str:
    """A markdown table cell: pipes escaped so regexes like (q|k) stay in their column."""
    return str(v).replace("|", "\\|")


def dataset_info(cfg) -> tuple[str, str | None, list[str]]:
    """(display name, Hub dataset id or None, extra tags) of the recipe's data."""
    path = str(cfg.data.path)
    tags: list[str] = []
    if path.startswith("reasoning_gym:"):
        task = path.split(":", 1)[1]
        return f"reasoning-gym task `{task}`", None, ["reasoning-gym", task.replace("_", "-")]
    if path == "humaneval":
        return "HumanEval", "openai/openai_humaneval", ["code"]
    p = Path(path)
    local = p.suffix in (".jsonl", ".json", ".parquet", ".csv")
    name = p.name if local else path
    low = path.lower()
    for key in ("gsm8k", "math", "countdown", "humaneval", "mbpp", "arc"):
        if key in low:
            tags.append(key)
            break
    if local:
        return f"local file `{name}`", None, tags
    return f"[{path}](https://huggingface.co/datasets/{path})" + (f" ({cfg.data.name})" if cfg.data.name else ""), path, tags


def eval_before_after(evals: list[dict], step: int) -> tuple[dict | None, dict | None]:
    """(the eval at step 0, the latest eval at or before `step`), each None if absent."""
    before = next((e for e in evals if e.get("step") == 0), None)
    after_candidates = [e for e in evals if isinstance(e.get("step"), int) and 0 < e["step"] <= step]
    after = max(after_candidates, key=lambda e: e["step"]) if after_candidates else None
    return before, after


def card_metadata(inp: CardInputs, license_id: str, license_extra: dict, base_id: str | None) -> str:
    """The YAML header (Hub metadata), via huggingface_hub's ModelCardData."""
    from huggingface_hub import EvalResult, ModelCardData

    _, dataset_id, data_tags = dataset_info(inp.cfg)
    tags = list(BASE_TAGS)
    for t in data_tags + ["reasoning"]:
        if t not in tags:
            tags.append(t)
    eval_results = None
    _, after = eval_before_after(inp.evals, inp.step)
    if after is not None and isinstance(after.get("accuracy"), (int, float)) and not math.isnan(after["accuracy"]):
        ds_type = dataset_id or Path(str(inp.cfg.data.path)).stem or "custom"
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=ds_type,
                dataset_name=ds_type,
                dataset_split=inp.cfg.data.eval_split or f"held-out ({after.get('n', '?')} rows of {inp.cfg.data.split})",
                metric_type="accuracy",
                metric_name=f"accuracy ({inp.cfg.rewards[0].name}, greedy)",
                metric_value=float(after["accuracy"]),
            )
        ]
    data = ModelCardData(
        base_model=base_id,
        datasets=[dataset_id] if dataset_id else None,
        license=license_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=inp.model_name,
        eval_results=eval_results,
        **license_extra,
    )
    return data.to_yaml()


def render_model_card(inp: CardInputs) -> str:
    """README.md text: metadata header, results, plot, recipe, usage, reproduction, licence."""
    cfg, es, gen = inp.cfg, inp.cfg.es, inp.cfg.generation
    base_id = base_model_id(cfg.model, inp.base_model_dir)
    license_id, license_src, license_extra = resolve_license(
        inp.base_model_dir, [base_id or "", str(cfg.model), inp.base_model_dir.name]
    )
    header = card_metadata(inp, license_id, license_extra, base_id)
    base_display = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{cfg.model}` (local model)"
    data_display, _, _ = dataset_info(cfg)
    rewards = ", ".join(f"`{r.name}`" + (f" ×{r.weight:g}" if r.weight != 1 else "") for r in cfg.rewards)
    done = [m for m in inp.metrics if isinstance(m.get("step"), int) and m["step"] <= inp.step]
    seconds = sum(float(m.get("time/step", 0.0) or 0.0) for m in done)
    tokens = sum(int(m.get("new_tokens", 0) or 0) for m in done)
    load_id = inp.repo_id or "path/to/this/folder"

    lines = ["---", header.rstrip("\n"), "---", ""]
    lines += [f"# {inp.model_name}", ""]
    lines += [
        f"{base_display} fine-tuned on {data_display} with **EGGROLL** (low-rank evolution strategies: "
        f"forward passes only, no backpropagation) using eggroll-rl. "
        f"{inp.step} ES steps × {es.population} population members; reward: {rewards}.",
        "",
    ]

    # Results
    lines += ["## Results", ""]
    before, after = eval_before_after(inp.evals, inp.step)
    if before is None and after is None:
        lines += ["No evaluation was run during training (`train.eval_every: 0`).", ""]
    else:
        n = (after or before).get("n", "?")
        decoding = "Greedy decoding" if gen.samples_per_prompt == 1 else f"{gen.samples_per_prompt} samples per prompt"
        lines += [
            f"{decoding} on {n} held-out prompts "
            f"(accuracy = the primary reward `{cfg.rewards[0].name}`; 95% interval).",
            "",
            "| model | step | accuracy | 95% CI | mean reward | n |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for label, rec in (("base (before)", before), ("EGGROLL (after)", after)):
            if rec is None:
                lines.append(f"| {label} | — | not evaluated | | | |")
                continue
            ci = (f"[{_fmt(rec['ci_low'])}, {_fmt(rec['ci_high'])}]"
                  if isinstance(rec.get("ci_low"), (int, float)) and isinstance(rec.get("ci_high"), (int, float)) else "")
            lines.append(
                f"| {label} | {rec.get('step')} | {_fmt(rec.get('accuracy'))} | {ci} | {_fmt(rec.get('reward_mean'))} | {rec.get('n', '')} |"
            )
        if before is not None and after is not None:
            try:
                delta = float(after["accuracy"]) - float(before["accuracy"])
                lines += ["", f"Accuracy {_fmt(before['accuracy'])} → {_fmt(after['accuracy'])} ({delta * 100:+.1f} points)."]
            except (KeyError, TypeError, ValueError):
                pass
        lines.append("")
    lines += [f"![Training curves: train reward per step, eval accuracy per evaluation]({PLOT_FILE})", ""]

    # Training
    lines += ["## Training", ""]
    lines += [
        f"- **Base model:** {base_display}",
        f"- **Task / data:** {data_display}"
        + (f", prompts formatted with the chat template" if cfg.data.chat_template else "")
        + (f"; held-out eval: `{cfg.data.eval_split}`" if cfg.data.eval_split else f"; held-out eval: {cfg.data.eval_size} rows"),
        f"- **Rewards:** {rewards}",
        f"- **Steps:** {inp.step}" + (f" (of {inp.total_steps} logged in the run)" if inp.total_steps != inp.step else ""),
        f"- **Wall-clock:** {human_seconds(seconds)} (sum of step times, evals excluded; {tokens:,} tokens generated)",
        f"- **Recipe:** {cfg.description} (`training/config.yaml`)" if cfg.description else "- **Recipe:** `training/config.yaml`",
        f"- **Weights:** `model.safetensors`, {inp.weights_dtype or cfg.dtype}, {human_bytes(inp.weights_bytes)}; "
        + ("rebuilt by replaying the fitness log" if inp.source == "replay" else "from the run's checkpoint"),
        "",
        "| hyperparameter | value |",
        "|---|---|",
    ]
    hp = [
        ("population (mirrored pairs)", f"{es.population} ({es.population // 2})"),
        ("perturbation rank r", es.rank),
        ("σ (sigma)", f"{es.sigma:g}" + (f", {es.sigma_schedule} → ×{es.sigma_final_ratio:g}" if es.sigma_schedule != "constant" else "")),
        ("learning rate", f"{es.lr:g} ({es.lr_convention} convention)"
         + (f", {es.lr_schedule} → ×{es.lr_final_ratio:g}" if es.lr_schedule != "constant" else "")
         + (f", warmup {es.warmup_steps}" if es.warmup_steps else "")),
        ("optimizer", es.optimizer + (f", momentum {es.momentum:g}" if es.optimizer == "sgd" and es.momentum else "")
         + (f", betas {tuple(es.adam_betas)}" if es.optimizer == "adam" else "")
         + (f", weight decay {es.weight_decay:g}" if es.weight_decay else "")),
        ("fitness shaping", es.fitness_shaping),
        ("prompts per step", es.prompts_per_step),
        ("perturbed weights", ", ".join(f"`{t}`" for t in es.targets)),
        ("generation", f"max {gen.max_new_tokens} new tokens, temperature {gen.temperature:g}"
         + (f", {gen.samples_per_prompt} samples/prompt" if gen.samples_per_prompt > 1 else "")),
        ("engine dtype / backend", f"{cfg.dtype} / {cfg.backend}"),
        ("seed", cfg.seed),
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in hp]
    lines += ["", "The full resolved recipe is in `training/config.yaml`.", ""]

    # Usage
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_id = "{load_id}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        "model = AutoModelForCausalLM.from_pretrained(model_id)",
        'messages = [{"role": "user", "content": "What is 7 * 6?"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "out = model.generate(**inputs, max_new_tokens=256, do_sample=False)",
        "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        "With vLLM:",
        "",
        "```python",
        "from vllm import LLM, SamplingParams",
        "",
        f'llm = LLM(model="{load_id}")',
        'print(llm.chat([{"role": "user", "content": "What is 7 * 6?"}], SamplingParams(temperature=0, max_tokens=256))[0].outputs[0].text)',
        "```",
        "",
    ]

    # Reproduction
    lines += [
        "## Reproduce",
        "",
        "EGGROLL weights are a pure function of the base model, the seed, the optimizer settings and the "
        "per-step fitness vectors: each step's low-rank noise is regenerated from (seed, step, member, parameter). "
        "`training/fitness.jsonl` holds those vectors and `training/config.yaml` the recipe, so `training/` is a "
        "run directory from which the weights are rebuilt bit for bit (CPU, fp32) without any saved checkpoint "
        "(the base model is fetched as the recipe names it):",
        "",
        "```bash",
        "eggroll-rl export --replay training --out replayed   # == model.safetensors of this folder",
        "```",
        "",
        f"Fitness log: {human_bytes(inp.fitness_log_bytes)} for {inp.step} steps"
        + (f", versus {human_bytes(inp.checkpoint_bytes)} for one checkpoint (weights + fp32 master + optimizer state)."
           if inp.checkpoint_bytes else f", versus {human_bytes(inp.weights_bytes)} of weights."),
        "`training/metrics.jsonl` and `training/eval.jsonl` are the run's logs up to this step.",
        "",
    ]

    # Licence
    lines += [
        "## License",
        "",
        f"`{license_id}`, inherited from the base model (source: {license_src}).",
        "",
    ]
    return "\n".join(lines)
