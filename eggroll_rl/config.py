"""Typed recipes: YAML + ``key=value`` overrides, validated before anything heavy happens.

A recipe is a YAML file whose keys mirror the dataclasses below. Overrides use dot paths
(``es.sigma=0.002``, ``data.path=../shared/data/gsm8k/test.jsonl``); their values are parsed
as YAML scalars, so ``es.population=64`` is an int and ``generation.stop=["\\n\\n"]`` a list.

Every problem (an unknown key, a wrong type, an impossible combination) raises
:class:`ConfigError` whose message is one line naming the key, the bad value and what is
allowed. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .settings import ConfigError, build, merge, parse_overrides


TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")


@dataclass
class DataConfig:
    """Where prompts and gold answers come from."""

    # A hub dataset id, a local .jsonl/.json/.parquet/.csv file, or "reasoning_gym:<task>".
    path: str = ""
    # Hub config name (e.g. "main" for openai/gsm8k); ignored for local files.
    name: str | None = None
    split: str = "train"
    # Split used for held-out evaluation. None: carve `eval_size` rows off `split` instead.
    eval_split: str | None = None
    eval_size: int = 64
    # Dataset columns holding the question and the gold answer.
    # A dataset in TRL's formats needs neither: its `prompt` column (text, or a list of chat
    # messages) is the question when `question_field` is absent.
    question_field: str = "question"
    answer_field: str | None = "answer"  # null: no gold answer (the rewards read other columns)
    # Python format string applied to the question; `{question}` is the question text.
    prompt_template: str = "{question}"
    system_prompt: str | None = None
    # The start of every answer, appended to the prompt after the chat template's assistant
    # header ("The final answer is", "<think>"): the model writes on from it, and the rewards
    # grade what it writes (TRL's `completions=`). Shorter answers, fewer decode steps.
    response_prefix: str = ""
    # Use the tokenizer's chat template (instruct models). False: the raw prompt text.
    chat_template: bool = True
    shuffle_seed: int = 0
    # Cap on training rows (0 = all).
    max_train_rows: int = 0
    # Options for procedural tasks (reasoning_gym:<task>), passed to the task's config.
    task_options: dict[str, Any] = field(default_factory=dict)
    train_size: int = 2000
    # Rows carved off the training rows (never trained on) to choose settings on; evals score
    # them instead of the held-out set with evaluate_on: validation.
    validation_size: int = 0
    evaluate_on: Literal["held_out", "validation"] = "held_out"

    @property
    def eval_set(self) -> str:
        """What evals score, as tables and cards name it: "held-out" or "validation"."""
        return self.evaluate_on.replace("_", "-")


@dataclass
class GenerationConfig:
    """How every member answers: the same settings for training rollouts and eval."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    # Completions per (member, prompt). >1 needs temperature > 0.
    samples_per_prompt: int = 1
    stop: list[str] = field(default_factory=list)
    # Always generate max_new_tokens (benchmarks: the same work for every row).
    ignore_eos: bool = False
    # Rows per batch in the PyTorch backend (caps memory); 0 = as many as fit: all rows on a CPU,
    # sized from free memory on a GPU.
    max_batch_rows: int = 0
    # The PyTorch backend's static KV cache and compiled decode step (CUDA graphs on a GPU);
    # auto = on a GPU only (on a CPU it compiles for minutes and gains nothing).
    compile: bool | Literal["auto"] = "auto"


@dataclass
class ESConfig:
    """The EGGROLL evolution strategy. See eggroll_rl/es.py for the exact update."""

    population: int = 32  # N members = N/2 mirrored pairs; must be even
    rank: int = 1  # r of each member's low-rank perturbation
    sigma: float = 1e-3  # perturbation scale σ
    lr: float = 1e-3  # step size on ĝ (see es.py for how it maps to the paper / official code)
    # "gradient": W += lr·ĝ. "official": es.lr in HyperscaleES/optax units (step lr·σ·√N·ĝ for SGD).
    lr_convention: Literal["gradient", "official"] = "gradient"
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0  # SGD only
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW-style), applied to perturbed matrices only
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    sigma_schedule: Literal["constant", "cosine", "linear"] = "constant"
    # Final value as a fraction of the initial one, for non-constant schedules.
    lr_final_ratio: float = 0.1
    sigma_final_ratio: float = 1.0
    warmup_steps: int = 0
    fitness_shaping: Literal["normalize", "zscore", "centered_rank", "raw"] = "normalize"
    prompts_per_step: int = 8
    # The noise generator (noise.py), recorded in the run: auto is philox-torch for an engine on
    # a GPU (drawn there, all pairs at once), philox-numpy on a CPU (faster there).
    noise: Literal["auto", "philox-numpy", "philox-torch"] = "auto"
    # Where the fp32 master copy and the update live: auto puts them on the engine's GPU when the
    # PyTorch backend runs there and they fit in half its free memory, else on the CPU.
    master_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Regular expressions on parameter names (full match). Default: attention + MLP linears.
    targets: list[str] = field(
        default_factory=lambda: [
            r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight"
        ]
    )


@dataclass
class RewardSpec:
    """One reward: a registered name (see rewards/) or ``module:function``, and its weight."""

    name: str = "math_accuracy"
    weight: float = 1.0


@dataclass
class ClusterConfig:
    """The population spread over Ray workers (cluster.py). workers: 1 = everything in this
    process, no Ray needed."""

    workers: int = 1
    # An existing Ray cluster ("auto", "ray://head:10001"); null starts a local Ray instance.
    address: str | None = None
    cpus_per_worker: int = 0  # 0: this machine's cores split evenly between local workers
    gpus_per_worker: float = 0.0  # 1 on GPU machines: one engine per GPU
    check_every: int = 10  # steps between checks that every worker's master equals the trainer's


@dataclass
class TrainConfig:
    # The lr/sigma schedules' horizon. 0: as many steps as train.time_budget_minutes holds at the
    # first step's pace, fixed then and recorded in config.yaml (resume and replay run the same).
    steps: int = 100
    # Stop after this many minutes of training steps (evals excluded), at the end of a step;
    # 0 = no limit. The last step is checkpointed as the final one.
    time_budget_minutes: float = 0.0
    eval_every: int = 10  # 0 = no periodic eval
    checkpoint_every: int = 10  # 0 = only the final checkpoint
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = all)
    # False: no checkpoint at the end (benchmarks): the fitness log still rebuilds the weights
    # (`eggroll-rl export`, replay.py), but --resume restarts from the last checkpoint kept.
    final_checkpoint: bool = True
    log_samples: int = 4  # completions written to samples.jsonl per step
    # Every N steps, the step's completions go to the trackers as a table (0 = never).
    log_completions_every: int = 10


@dataclass
class RecipeConfig:
    """A whole training recipe."""

    model: str = ""  # alias, local HF folder, hub id, run directory or checkpoint
    description: str = ""
    run_name: str = ""  # default: recipe file stem + timestamp
    output_dir: str = "outputs"
    seed: int = 0
    backend: Literal["auto", "torch", "vllm"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Engine weights (the ES update always runs on an fp32 master copy). auto: bfloat16 on a GPU
    # and on a CPU that runs it natively (AMX / avx512_bf16), float32 on other CPUs, where vLLM's
    # bf16 path is several times slower (machine.resolve_dtype).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    es: ESConfig = field(default_factory=ESConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    train: TrainConfig = field(default_factory=TrainConfig)
    # Engine options for the vLLM backend (gpu_memory_utilization, max_model_len, ...).
    vllm: dict[str, Any] = field(default_factory=dict)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Experiment trackers mirroring the run's logs: any of TRACKERS, or none (tracking.py).
    report_to: list[str] = field(default_factory=list)


def load_recipe_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' not found; list the shipped ones with `eggroll-rl recipes`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of keys to values, got {type(data).__name__}")
    return data


def from_dict(data: dict[str, Any]) -> RecipeConfig:
    """Build and validate a recipe from plain data."""
    rewards = data.get("rewards")
    if isinstance(rewards, (str, dict)):
        data = {**data, "rewards": [rewards]}
    if isinstance(data.get("rewards"), list):
        # "math_accuracy" is shorthand for {name: math_accuracy, weight: 1}
        data = {**data, "rewards": [{"name": r} if isinstance(r, str) else r for r in data["rewards"]]}
    if isinstance(data.get("report_to"), str):  # as transformers and TRL take it: "wandb", "wandb,tensorboard"
        data = {**data, "report_to": [t.strip() for t in data["report_to"].split(",") if t.strip()]}
    cfg = build(RecipeConfig, data)
    validate(cfg)
    return cfg


# Recipe keys (of `data:`) that may name a local file.
_FILE_KEYS = ("path", "eval_split")


def data_files(data: dict[str, Any], folder: Path) -> dict[str, str]:
    """{key: name} of the data files a recipe file (as plain data) names relative to its folder."""
    section = data.get("data")
    if not isinstance(section, dict):
        return {}
    return {key: value for key in _FILE_KEYS if isinstance(value := section.get(key), str) and value
            and not Path(value).is_absolute() and (folder / value).is_file()}


def _files_relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A data file named relatively in a recipe file is relative to the recipe's folder (so a
    recipe and its data move together); saved absolute, so a run resumes from anywhere. A name
    that is no file there keeps its meaning: a hub id, or a path relative to the current folder."""
    files = data_files(data, folder)
    if not files:
        return data
    return {**data, "data": {**data["data"], **{key: str((folder / name).resolve()) for key, name in files.items()}}}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Recipe file (optional) merged with ``key=value`` overrides, validated."""
    data = _files_relative_to(load_recipe_dict(path), Path(path).resolve().parent) if path is not None else {}
    return from_dict(merge(data, parse_overrides(overrides or [])))


def to_dict(cfg: RecipeConfig) -> dict[str, Any]:
    """Plain data (YAML-safe) for saving the resolved recipe."""

    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def validate(cfg: RecipeConfig) -> None:
    """Combinations that types alone cannot rule out."""
    es, gen, data, train = cfg.es, cfg.generation, cfg.data, cfg.train

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(bool(cfg.model), "model: missing; give an alias (e.g. smollm2-135m-instruct), a local folder or a hub id")
    need(bool(data.path), "data.path: missing; give a hub dataset, a local .jsonl file or reasoning_gym:<task>")
    need(es.population >= 2 and es.population % 2 == 0,
         f"es.population: got {es.population}; expected an even number >= 2 (members come in mirrored ± pairs)")
    need(es.rank >= 1, f"es.rank: got {es.rank}; expected an integer >= 1")
    need(es.sigma > 0, f"es.sigma: got {es.sigma}; expected a number > 0")
    need(es.lr > 0, f"es.lr: got {es.lr}; expected a number > 0")
    need(0 <= es.momentum < 1, f"es.momentum: got {es.momentum}; expected 0 <= momentum < 1")
    need(all(0 <= b < 1 for b in es.adam_betas), f"es.adam_betas: got {list(es.adam_betas)}; expected two numbers in [0, 1)")
    need(es.weight_decay >= 0, f"es.weight_decay: got {es.weight_decay}; expected a number >= 0")
    need(0 < es.lr_final_ratio <= 1 and 0 < es.sigma_final_ratio <= 1,
         "es.lr_final_ratio / es.sigma_final_ratio: expected numbers in (0, 1]")
    need(es.prompts_per_step >= 1, f"es.prompts_per_step: got {es.prompts_per_step}; expected an integer >= 1")
    need(bool(es.targets), "es.targets: empty; give at least one regular expression on parameter names")
    for pattern in es.targets:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"es.targets: '{pattern}' is not a valid regular expression ({exc})")
    need(gen.max_new_tokens >= 1, f"generation.max_new_tokens: got {gen.max_new_tokens}; expected an integer >= 1")
    need(gen.temperature >= 0, f"generation.temperature: got {gen.temperature}; expected a number >= 0 (0 = greedy)")
    need(0 < gen.top_p <= 1, f"generation.top_p: got {gen.top_p}; expected a number in (0, 1]")
    need(gen.samples_per_prompt >= 1, f"generation.samples_per_prompt: got {gen.samples_per_prompt}; expected an integer >= 1")
    need(gen.samples_per_prompt == 1 or gen.temperature > 0,
         f"generation.samples_per_prompt={gen.samples_per_prompt} needs generation.temperature > 0 "
         "(greedy decoding gives identical samples)")
    need(gen.max_batch_rows >= 0, f"generation.max_batch_rows: got {gen.max_batch_rows}; expected an integer >= 0")
    need(data.eval_size >= 0, f"data.eval_size: got {data.eval_size}; expected an integer >= 0")
    need(train.steps >= 1 or (train.steps == 0 and train.time_budget_minutes > 0),
         f"train.steps: got {train.steps}; expected an integer >= 1, or 0 with train.time_budget_minutes > 0 "
         "(as many steps as the budget holds)")
    need(train.eval_every >= 0 and train.checkpoint_every >= 0 and train.keep_checkpoints >= 0,
         "train.eval_every / checkpoint_every / keep_checkpoints: expected integers >= 0")
    need(train.eval_every == 0 or data.eval_size > 0,
         f"train.eval_every={train.eval_every} needs data.eval_size > 0 (or set train.eval_every=0)")
    need(bool(cfg.rewards), "rewards: empty; give at least one reward, e.g. [math_accuracy]")
    for i, r in enumerate(cfg.rewards):
        need(bool(r.name), f"rewards[{i}].name: missing; give a registered reward or module:function")
    need(cfg.cluster.workers >= 1, f"cluster.workers: got {cfg.cluster.workers}; expected an integer >= 1")
    need(cfg.cluster.workers <= es.population // 2,
         f"cluster.workers: {cfg.cluster.workers} workers for {es.population // 2} mirrored pairs; each worker needs at least one pair")
    need(cfg.cluster.check_every >= 1, f"cluster.check_every: got {cfg.cluster.check_every}; expected an integer >= 1")
    bad = [t for t in cfg.report_to if t.strip().lower() not in (*TRACKERS, "none")]
    need(not bad, f"report_to: unknown tracker {bad[0]!r}; choose from {', '.join(TRACKERS)} or none" if bad else "")
    need(data.validation_size >= 0, f"data.validation_size: got {data.validation_size}; expected an integer >= 0")
    need(train.time_budget_minutes >= 0, f"train.time_budget_minutes: got {train.time_budget_minutes}; expected >= 0")
    need(train.log_completions_every >= 0, f"train.log_completions_every: got {train.log_completions_every}; expected an integer >= 0")
    need(not (es.master_device == "cuda" and cfg.device == "cpu"),
         "es.master_device: cuda needs the engine on the GPU too; set device=cuda (or auto), or es.master_device=cpu")
    if cfg.dtype == "float16" and cfg.device == "cpu":
        raise ConfigError("dtype: float16 is not supported on CPU; use float32 or bfloat16")
    try:
        data.prompt_template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"data.prompt_template: {data.prompt_template!r} is not a valid template ({exc!r}); "
            "only {question} may appear in braces (double other braces: {{ }})"
        )

