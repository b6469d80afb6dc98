"""The model card (README.md with Hub metadata) and training-curve plot of an exported run.

One template serves a merged model and a LoRA adapter of the learned change (``CardInputs.adapter``:
``library_name: peft``, the base it adapts, its rank, energy, size and accuracy, PEFT / vLLM usage).

Everything here is read from the run directory (config.yaml, metrics.jsonl, eval.jsonl,
fitness.jsonl) and the base model folder; nothing is invented. The card's text is the template
eggroll_rl/templates/model_card.md, which huggingface_hub's ModelCard fills: this module turns the
run into the template's plain values. The licence is inherited from the base model: its README
metadata when the folder has one, else the licence our alias conversion recorded
(eggroll_source.json), else a small table of known model families, else 'other'.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load

from ..config import RecipeConfig
from ..data import parse_source
from ..hub import is_repo_id
from ..models import adapter_origin, alias_hub_id, list_aliases
from ..units import human_bytes, human_seconds
from .plan import AdapterReport

PLOT_FILE = "training_curves.png"
TEMPLATE = Path(__file__).parent.parent / "templates" / "model_card.md"
BASE_TAGS = ["eggroll", "evolution-strategies", "eggroll-rl", "low-rank-perturbations"]
# Well-known data sets: the first one named in a local file's path or a Hub dataset id becomes a
# tag, so that the Hub lists the model with them.
DATASET_TAGS = ("gsm8k", "math", "countdown", "humaneval", "mbpp", "arc")

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
    """What the card is made of; run.py fills it from a run directory."""

    cfg: RecipeConfig
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
    weights_dtype: str = ""  # of the exported weights, e.g. "bfloat16"
    adapter: AdapterReport | None = None  # an adapter export: what it keeps of the change, and its evals


@dataclass(frozen=True)
class DatasetInfo:
    """How the card names the recipe's data."""

    display: str  # markdown for the card's text
    hub_id: str | None  # the Hub dataset, for the metadata's `datasets`
    tags: list[str]


# ----------------------------------------------------------------------------------------
# Base model identity and licence


def hub_id_from_path(path: Path) -> str | None:
    """`.../models--org--name/snapshots/<sha>` (a hub cache snapshot) -> 'org/name'."""
    for part in reversed(Path(path).parts):
        m = re.fullmatch(r"models--([^-].*?)--(.+)", part)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def base_model_id(model_spec: str, base_model_dir: Path) -> str | None:
    """The Hub id of the base model, when it has one (None for local and random models)."""
    spec = str(model_spec).strip()
    alias_id = alias_hub_id(spec)
    if alias_id:
        return alias_id
    if is_repo_id(spec) and not Path(spec).expanduser().exists():
        return spec
    return hub_id_from_path(base_model_dir)


def resolve_license(base_model_dir: Path, names: list[str]) -> tuple[str, str, dict]:
    """(licence id, where it came from, extra metadata such as license_name/license_link); a
    base that is an adapter merged into its own base (models.adapter_origin) has that base's."""
    base_model_dir = Path(base_model_dir)
    origin = adapter_origin(base_model_dir)
    if origin is not None:
        return resolve_license(origin.base_folder(), [origin.base_model, *names])
    try:
        meta = metadata_load(base_model_dir / "README.md") or {}
    except (OSError, ValueError, yaml.YAMLError):  # no README, bad UTF-8, a block that is no mapping
        meta = {}
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
    # Imported here: matplotlib takes ~0.4 s to import, and only an export draws (the card's text needs none).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)

    steps = [m["step"] for m in metrics if _is_number(m.get("reward"))]
    rewards = [m["reward"] for m in metrics if _is_number(m.get("reward"))]
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
    top.set(ylabel="train reward", title="EGGROLL training")
    top.grid(alpha=0.3)

    ev = [e for e in evals if _is_number(e.get("accuracy"))]
    if ev:
        xs = [e["step"] for e in ev]
        acc = [e["accuracy"] for e in ev]
        bottom.plot(xs, acc, color="tab:green", marker="o", label="eval accuracy")
        if all(_is_number(e.get("ci_low")) and _is_number(e.get("ci_high")) for e in ev):
            bottom.fill_between(xs, [e["ci_low"] for e in ev], [e["ci_high"] for e in ev], color="tab:green", alpha=0.15, label="95% CI")
        er = [(e["step"], e["reward_mean"]) for e in ev if _is_number(e.get("reward_mean"))]
        if er:
            bottom.plot([s for s, _ in er], [r for _, r in er], color="tab:orange", marker="s", ls="--", label="eval mean reward")
        bottom.legend(loc="best", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no evaluations in this run", ha="center", va="center", transform=bottom.transAxes)
    bottom.set(ylabel="held-out eval", xlabel="step (updates)")
    bottom.grid(alpha=0.3)
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


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isnan(v):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)  # ints, bools, nan


def _cell(v: Any) -> str:
    """A markdown table cell: pipes escaped so regexes like (q|k) stay in their column."""
    return str(v).replace("|", "\\|")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def dataset_info(cfg: RecipeConfig) -> DatasetInfo:
    """How the card names the recipe's data (its kinds are parsed once, by data.parse_source)."""
    source = parse_source(cfg.data.path)
    file_name = Path(source.name).name
    keyword_tags = [key for key in DATASET_TAGS if key in source.name.lower()][:1]
    if source.kind == "task":
        return DatasetInfo(f"reasoning-gym task `{source.name}`", None, ["reasoning-gym", source.name.replace("_", "-")])
    if source.kind == "humaneval":
        return DatasetInfo("HumanEval", "openai/openai_humaneval", ["code"])
    if source.kind == "mbpp":
        return DatasetInfo(f"MBPP-format file `{file_name}`", None, ["code", "mbpp"])
    if source.kind == "local":
        return DatasetInfo(f"local file `{file_name}`", None, keyword_tags)
    display = f"[{source.name}](https://huggingface.co/datasets/{source.name})" + (f" ({cfg.data.name})" if cfg.data.name else "")
    return DatasetInfo(display, source.name, keyword_tags)


def eval_before_after(evals: list[dict], step: int) -> tuple[dict | None, dict | None]:
    """(the eval at step 0, the latest eval at or before `step`), each None if absent."""
    before = next((e for e in evals if e.get("step") == 0), None)
    after_candidates = [e for e in evals if isinstance(e.get("step"), int) and 0 < e["step"] <= step]
    after = max(after_candidates, key=lambda e: e["step"]) if after_candidates else None
    return before, after


def card_data(inp: CardInputs, data: DatasetInfo, base_id: str | None, license_id: str, license_extra: dict) -> ModelCardData:
    """The YAML header (Hub metadata): base model, data, licence, tags and the latest eval."""
    cfg = inp.cfg
    _, after = eval_before_after(inp.evals, inp.step)
    if inp.adapter is not None:  # the Hub lists the adapter's own result, or none
        after = inp.adapter.eval_adapter
    eval_name = data.hub_id or Path(cfg.data.path).stem or "custom"  # what the eval results name the data
    eval_results = None
    if after is not None and _is_number(after.get("accuracy")) and not math.isnan(after["accuracy"]):
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=eval_name,
                dataset_name=eval_name,
                dataset_split=(f"validation ({after.get('n', '?')} rows carved off {cfg.data.split})" if cfg.data.evaluate_on == "validation"
                               else cfg.data.eval_split or f"held-out ({after.get('n', '?')} rows of {cfg.data.split})"),
                metric_type="accuracy",
                metric_name=f"accuracy ({cfg.rewards[0].name}, greedy)",
                metric_value=float(after["accuracy"]),
            )
        ]
    return ModelCardData(
        base_model=base_id,
        datasets=[data.hub_id] if data.hub_id else None,
        license=license_id,
        library_name="transformers" if inp.adapter is None else "peft",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*BASE_TAGS, *data.tags, "reasoning", *(["lora"] if inp.adapter else [])])),  # in order, once each
        model_name=inp.model_name,
        eval_results=eval_results,
        **license_extra,
    )


def _eval_row(label: str, rec: dict | None) -> dict:
    """One row of the results table, its cells formatted (`evaluated` False: no such eval)."""
    if rec is None:
        return {"label": label, "evaluated": False}
    has_ci = _is_number(rec.get("ci_low")) and _is_number(rec.get("ci_high"))
    ci = f"[{_fmt(rec['ci_low'])}, {_fmt(rec['ci_high'])}]" if has_ci else ""
    return {"label": label, "evaluated": True, "step": rec.get("step"), "accuracy": _fmt(rec.get("accuracy")),
            "ci": ci, "reward_mean": _fmt(rec.get("reward_mean")), "n": rec.get("n", "")}


def _results(inp: CardInputs) -> dict | None:
    """The Results section's values: the table rows (before, after, an adapter) and the accuracy change (None: no evals)."""
    before, after = eval_before_after(inp.evals, inp.step)
    adapter = inp.adapter
    if adapter is not None and adapter.eval_merged is not None:  # the merged model at the exported step
        after = adapter.eval_merged
    if before is None and after is None:
        return None
    samples = inp.cfg.generation.samples_per_prompt
    change = None
    if before is not None and after is not None and _is_number(before.get("accuracy")) and _is_number(after.get("accuracy")):
        points = (after["accuracy"] - before["accuracy"]) * 100
        change = {"before": _fmt(before["accuracy"]), "after": _fmt(after["accuracy"]), "points": f"{points:+.1f}"}
    return {
        "decoding": "Greedy decoding" if samples == 1 else f"{samples} samples per prompt",
        "n": (after or before).get("n", "?"),
        "rows": [_eval_row("base (before)", before), _eval_row("EGGROLL (after)" if adapter is None else "EGGROLL, merged weights", after)]
        + ([_eval_row("this adapter", adapter.eval_adapter)] if adapter is not None else []),
        "change": change,
    }


def _hyperparameters(cfg: RecipeConfig) -> list[tuple[str, str]]:
    """(name, markdown cell) rows of the hyperparameter table."""
    es, gen = cfg.es, cfg.generation
    rows = [
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
    return [(name, _cell(value)) for name, value in rows]


def _adapter_values(adapter: AdapterReport, base_id: str | None) -> dict:
    """The adapter's rank, energy, size and base as the template shows them."""
    choice = f"--rank {adapter.choice['rank']}" if "rank" in adapter.choice else f"--energy {adapter.choice['energy']:g}"
    return {
        "choice": choice, "r": adapter.r, "min_rank": adapter.min_rank, "matrices": adapter.matrices,
        "energy": f"{adapter.energy_kept:.2%}", "worst": f"{adapter.worst_energy:.2%}", "worst_matrix": adapter.worst_matrix,
        "merged_size": human_bytes(adapter.merged_bytes), "ratio": f"{adapter.adapter_bytes / adapter.merged_bytes:.1%}",
        "base_model": adapter.base_model, "base_note": list_aliases().get(adapter.base_model),
        # what transformers and vLLM load the base by: an alias is a name only eggroll-rl knows
        "base_load": base_id or (adapter.base_model if Path(adapter.base_model).is_absolute() else f"path/to/{adapter.base_model}"),
        "max_lora_rank": adapter.max_lora_rank,
        "difference": "{:+.1f} points [{:+.1f}, {:+.1f}]".format(*(100 * v for v in adapter.difference)) if adapter.difference else None,
    }


def render_model_card(inp: CardInputs) -> str:
    """README.md text: templates/model_card.md filled with the Hub metadata and the run's values."""
    cfg = inp.cfg
    spec = inp.adapter.base_model if inp.adapter is not None else cfg.model  # an adapter names the base it applies to
    base_id = base_model_id(spec, inp.base_model_dir)
    license_id, license_source, license_extra = resolve_license(
        inp.base_model_dir, [base_id or "", str(spec), inp.base_model_dir.name]
    )
    data = dataset_info(cfg)
    done = [m for m in inp.metrics if isinstance(m.get("step"), int) and m["step"] <= inp.step]
    card = ModelCard.from_template(
        card_data(inp, data, base_id, license_id, license_extra),
        template_path=str(TEMPLATE),
        model_name=inp.model_name,
        base_display=f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{spec}` (local model)",
        data_display=data.display,
        rewards=", ".join(f"`{r.name}`" + (f" ×{r.weight:g}" if r.weight != 1 else "") for r in cfg.rewards),
        primary_reward=cfg.rewards[0].name,
        steps=inp.step, total_steps=inp.total_steps, population=cfg.es.population,
        results=_results(inp),
        plot_file=PLOT_FILE,
        chat_template=cfg.data.chat_template, system_prompt=cfg.data.system_prompt, eval_set=cfg.data.eval_set, validation_size=cfg.data.validation_size,
        response_prefix=cfg.data.response_prefix,
        eval_split=cfg.data.eval_split, eval_size=cfg.data.eval_size,
        wall_clock=human_seconds(sum(float(m.get("time/step", 0.0) or 0.0) for m in done)),
        tokens=f"{sum(int(m.get('new_tokens', 0) or 0) for m in done):,}",
        description=cfg.description,
        weights_dtype=inp.weights_dtype, weights_size=human_bytes(inp.weights_bytes),
        replayed=inp.source == "replay",
        hyperparameters=_hyperparameters(cfg),
        load_id=inp.repo_id or "path/to/this/folder",
        fitness_log_size=human_bytes(inp.fitness_log_bytes),
        checkpoint_size=human_bytes(inp.checkpoint_bytes) if inp.checkpoint_bytes else None,
        license_source=license_source,
        adapter=_adapter_values(inp.adapter, base_id) if inp.adapter is not None else None,
    )
    return f"{card}\n"  # Jinja drops the template's final line break
