"""The Python API: what the CLI does, for notebooks and scripts.

    from eggroll_rl import train, evaluate, export

    run = train("quickstart", "train.steps=10", output_dir="outputs", run_name="nb")  # -> outputs/nb
    print(evaluate(run)["accuracy"])                       # the run's latest checkpoint, its recipe
    print(evaluate("smollm2-135m-instruct", "quickstart"))  # any model on any recipe
    folder = export(run, as_adapter=True, rank=64)         # a PEFT adapter of what it learned
    train("quickstart", reward_funcs=[my_reward, (other_reward, 0.5)])  # TRL-style reward functions

Recipes are files or shipped names with `key=value` overrides, exactly as on the command line;
errors are the CLI's one-line ConfigErrors (a ValueError), raised instead of printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ConfigError, RecipeConfig, load_config
from .recipes import recipe_path
from .run_dir import RunDir


def _recipe(recipe: str | Path | None, overrides: tuple[str, ...], model: str | Path | None = None) -> RecipeConfig:
    """A recipe (file, shipped name, or a run directory's saved one) with overrides applied."""
    if recipe is None or RunDir.holds_run(recipe):
        run = RunDir(recipe if recipe is not None else model)
        return run.load_config(list(overrides))
    return load_config(recipe_path(recipe), list(overrides))


def reward_spec(fn: Callable) -> str:
    """`module:function` of a reward function, as a recipe names it (and a resumed run, an
    eval or an export imports it again); ConfigError for one that cannot be imported by name."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not name.isidentifier():
        raise ConfigError(f"reward_funcs: {fn!r} is not a module-level function; define it at the top level of a "
                          "module (or a notebook) so that the run can name it, resume and be evaluated")
    return f"{module}:{name}"


def train(recipe: str | Path, *overrides: str, resume: bool = False, verbose: bool = False,
          reward_funcs: list[Callable | tuple[Callable, float]] | None = None, **settings: Any) -> Path:
    """Train a recipe; returns the run directory. `settings` are top-level keys (output_dir=...,
    run_name=...); `reward_funcs` replaces the recipe's rewards with TRL-style functions (or
    (function, weight) pairs); `resume=True` continues `recipe` given as a run directory."""
    from .trainer import train as run_training  # torch, transformers: when training starts

    overrides = (*overrides, *(f"{k}={v}" for k, v in settings.items()))
    if reward_funcs:
        pairs = [f if isinstance(f, tuple) else (f, 1.0) for f in reward_funcs]
        overrides += ("rewards=[" + ", ".join(f"{{name: '{reward_spec(fn)}', weight: {w}}}" for fn, w in pairs) + "]",)
    if resume:
        run = RunDir(recipe)
        cfg = run.resume_config(list(overrides))
    else:
        cfg = _recipe(recipe, overrides)
        run = RunDir.new(cfg, recipe_path(recipe))
    run_training(cfg, run, resume=resume, verbose=verbose)
    return run.path


def evaluate(model: str | Path, recipe: str | Path | None = None, *overrides: str, seed: int = 0) -> dict[str, Any]:
    """Score `model` (alias, folder, adapter, hub id, run directory) on the recipe's eval rows as
    `eggroll-rl eval` does; without a recipe, a run directory is scored with its own. Returns the
    summary: accuracy, ci_low, ci_high, n, per-reward means, per_prompt, ..."""
    from .engines import evaluate_model

    return evaluate_model(_recipe(recipe, overrides, model), str(model), seed=seed).summary()


def export(run_dir: str | Path, out: str | Path | None = None, *, step: int | None = None, replay: bool = False,
           as_adapter: bool = False, rank: int | None = None, energy: float | None = None, force: bool = False) -> Path:
    """Export a run as a merged Hugging Face model folder, or `as_adapter` as a PEFT LoRA adapter
    (`rank` for every matrix, or `energy` kept per matrix; default energy 0.99); returns the folder.
    Pushing to the Hub is `eggroll-rl export --push-to-hub`."""
    from .adapter import RankChoice
    from .exporting import export_run

    choice = RankChoice.of(rank, energy) if as_adapter else None
    if choice is not None and choice.problem():
        raise ConfigError(choice.problem())
    return export_run(Path(run_dir), out=Path(out) if out is not None else None, step=step, replay=replay,
                      force=force, adapter=choice).out
