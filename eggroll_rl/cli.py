"""`eggroll-rl`: thin Typer commands; heavy imports happen inside them, after validation."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .config import ConfigError, RecipeConfig, load_config, load_recipe_dict
from .export_cli import export
from .recipes import shipped
from .run_dir import EVALS, RunDir
from .terminal import console, fail, quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune LLMs for reasoning with EGGROLL evolution strategies.")


def recipe_path(spec: str) -> Path:
    """A recipe file, or the name of a shipped one (`quickstart`, from any directory)."""
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return shipped().get(spec, path)


def run_dir_for(cfg: RecipeConfig, recipe: Path | None) -> RunDir:
    name = cfg.run_name or f"{recipe.stem if recipe else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunDir(Path(cfg.output_dir) / name)


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
            run = RunDir(resume)
            if not RunDir.holds_run(resume):
                fail(f"--resume {resume}: no config.yaml there; give a run directory written by `eggroll-rl train`", 2)
            cfg = run.resume_config(overrides)
        else:
            if recipe is None:
                fail("missing RECIPE; e.g. `eggroll-rl train recipes/tiny.yaml` (list them: `eggroll-rl recipes`)", 2)
            path = recipe_path(recipe)
            cfg = load_config(path, overrides)
            run = run_dir_for(cfg, path)
            if run.path.exists() and any(run.path.iterdir()):
                fail(f"run directory {run} already exists; continue it with --resume {run} or pick another run_name=", 2)
    except ConfigError as exc:
        fail(str(exc), 2)

    try:
        from .train import train as run_training  # torch, transformers: after the recipe is checked

        quiet_libraries()
        final = run_training(cfg, run, resume=resume is not None, console=console)
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: eggroll-rl train --resume {run}", 130)
    except ConfigError as exc:
        fail(str(exc), 2)
    except Exception as exc:  # an engine that died, a full disk, ...: keep the run resumable
        first = (str(exc).strip().splitlines() or [""])[0]
        problem = f"training stopped: {type(exc).__name__}: {first}"
        if isinstance(exc, OSError):
            problem += f" (check free space, permissions and file-size limits of output_dir={cfg.output_dir})"
        if not RunDir.holds_run(run.path):  # stopped before the run began: nothing to resume
            fail(problem, 1)
        try:
            where = f" (traceback in {run.write_error(traceback.format_exc())})"
        except OSError:  # the disk that failed the run may refuse the log too
            where = ""
        fail(f"{problem}{where}; checkpoints are intact: continue with eggroll-rl train --resume {run}", 1)
    console.print(f"done: final checkpoint [bold]{final}[/]")
    evals = run.read(EVALS)
    if len(evals) >= 2:
        before, after = evals[0], evals[-1]
        table = results_table(
            [(f"before (step {before['step']})", before), (f"after (step {after['step']})", after)],
            title=f"held-out {cfg.data.path}: {after['n']} prompts, greedy",
        )
        add_difference_row(table, before, after)
        console.print(table)


def results_table(named: list[tuple[str, dict]], title: str) -> Table:
    """One row per evaluation summary (see EvalResult.summary)."""
    extra = [k for k in named[0][1] if k.startswith(("pass@", "maj@"))]
    table = Table("model", "n", "accuracy [95% CI]", *extra, "tokens/s", title=title)
    for name, s in named:
        table.add_row(
            name, str(s["n"]), f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
            *(f"{s[k]:.3f}" for k in extra), f"{s['tokens_per_s']:.0f}",
        )
    return table


def add_difference_row(table: Table, before: dict, after: dict) -> None:
    from .metrics import paired_difference_ci

    diff, low, high = paired_difference_ci(after["per_prompt"], before["per_prompt"])
    table.add_row("difference", "", f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]", *[""] * (len(table.columns) - 3))


@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="Alias, local folder, hub id, run directory or checkpoint."),
    recipe: Optional[str] = typer.Argument(None, help="Recipe for data, prompt, generation and rewards (default: the run's own)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. data.eval_size=200"),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per prompt: 1 = greedy accuracy; k > 1 adds pass@k and maj@k."),
    temperature: float = typer.Option(0.7, help="Sampling temperature when --samples > 1."),
    compare: Optional[str] = typer.Option(None, "--compare", help="A second model (e.g. the base) scored on the same prompts."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL file for every completion and its rewards."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Score a model on a recipe's held-out set with the training grader: accuracy, pass@k, maj@k."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides.insert(0, recipe)
        recipe = None
    if samples < 1:
        fail(f"--samples: got {samples}; expected an integer >= 1", 2)
    if samples > 1:
        overrides += [f"generation.samples_per_prompt={samples}", f"generation.temperature={temperature}"]
    try:
        if recipe is None:
            if not RunDir.holds_run(model):
                fail(f"missing RECIPE: {model} is not a run directory with a config.yaml; e.g. `eggroll-rl eval {model} quickstart`", 2)
            cfg = RunDir(model).load_config(overrides)
        else:
            cfg = load_config(recipe_path(recipe), overrides)
    except ConfigError as exc:
        fail(str(exc), 2)

    out = out or Path(cfg.output_dir) / "eval" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    engine_log = out.with_suffix(".engine.log")
    results = []
    try:
        from .evaluation import evaluate_model  # torch, transformers: after the recipe is checked

        quiet_libraries()
        out.parent.mkdir(parents=True, exist_ok=True)
        for spec in [model] + ([compare] if compare else []):
            with console.status(f"evaluating {spec}"):
                results.append((spec, evaluate_model(cfg, spec, seed=seed, engine_log=engine_log)))
    except ConfigError as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    except Exception as exc:  # an engine that died, an unwritable output folder, ...
        first = (str(exc).strip().splitlines() or [""])[0]
        where = f" (engine output in {engine_log})" if engine_log.is_file() else ""
        fail(f"eval stopped: {type(exc).__name__}: {first}{where}", 1)
    with out.open("w") as f:
        for spec, result in results:
            result.write_jsonl(f, spec)
    summaries = [(spec, r.summary()) for spec, r in results]
    table = results_table(summaries, title=f"eval on {cfg.data.path} ({summaries[0][1]['n']} held-out prompts)")
    if compare:
        add_difference_row(table, summaries[1][1], summaries[0][1])
    console.print(table)
    console.print(f"completions: {out}")


@app.command()
def recipes() -> None:
    """List the shipped recipes with a one-line description each."""
    table = Table("recipe", "description", "model")
    for name, path in shipped().items():
        data = load_recipe_dict(path)
        table.add_row(name, str(data.get("description", "")), str(data.get("model", "")))
    console.print(table)


app.command()(export)  # export, model card, hub push, replay: its own module (export_cli.py)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
