"""`eggroll-rl`: thin Typer commands; heavy imports happen inside them, after validation."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, RecipeConfig, load_config, load_recipe_dict

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune LLMs for reasoning with EGGROLL evolution strategies.")
console = Console()
err_console = Console(stderr=True)

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def fail(message: str, code: int = 1) -> None:
    """One line naming the problem and the fix, then a non-zero exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def recipe_path(spec: str) -> Path:
    """A recipe file, or the name of a shipped one (`gsm8k` -> recipes/gsm8k.yaml)."""
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = RECIPES_DIR / f"{spec}.yaml"
    return shipped if shipped.is_file() else path


def run_dir_for(cfg: RecipeConfig, recipe: Path | None) -> Path:
    name = cfg.run_name or f"{recipe.stem if recipe else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output_dir) / name


@app.command()
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file or shipped recipe name (see `eggroll-rl recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides with dot paths, e.g. es.sigma=0.002"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
) -> None:
    """Train a model with EGGROLL on a recipe."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides.insert(0, recipe)  # `train --resume RUN key=value`: no recipe, only overrides
        recipe = None
    try:
        if resume is not None:
            saved = resume / "config.yaml"
            if not saved.is_file():
                fail(f"--resume {resume}: no config.yaml there; give a run directory written by `eggroll-rl train`", 2)
            cfg = load_config(saved, overrides)
            run_dir = resume
        else:
            if recipe is None:
                fail("missing RECIPE; e.g. `eggroll-rl train recipes/tiny.yaml` (list them: `eggroll-rl recipes`)", 2)
            path = recipe_path(recipe)
            cfg = load_config(path, overrides)
            run_dir = run_dir_for(cfg, path)
            if run_dir.exists() and any(run_dir.iterdir()):
                fail(f"run directory {run_dir} already exists; continue it with --resume {run_dir} or pick another run_name=", 2)
    except ConfigError as exc:
        fail(str(exc), 2)

    from transformers.utils import logging as hf_logging

    from .train import train as run_training

    import datasets

    hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
    datasets.disable_progress_bars()
    try:
        final = run_training(cfg, run_dir, resume=resume is not None, console=console)
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: eggroll-rl train --resume {run_dir}", 130)
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(f"done: final checkpoint [bold]{final}[/]")


@app.command()
def recipes() -> None:
    """List the shipped recipes with a one-line description each."""
    table = Table("recipe", "description", "model")
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        data = load_recipe_dict(path)
        table.add_row(path.stem, str(data.get("description", "")), str(data.get("model", "")))
    console.print(table)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
