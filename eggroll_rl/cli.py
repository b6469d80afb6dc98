"""`eggroll-rl`: thin Typer commands; heavy imports happen inside them, after validation."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from .config import ConfigError, data_files, load_config, load_recipe_dict, to_dict
from .export_cli import export
from .recipes import recipe_path, shipped, unknown_recipe
from .run_dir import EVALS, RunDir
from .terminal import console, fail, first_line, quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune LLMs for reasoning with EGGROLL evolution strategies.")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"eggroll-rl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Fine-tune LLMs for reasoning with EGGROLL evolution strategies."""


def split_overrides(recipe: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """(RECIPE, overrides): a RECIPE argument with '=' that names no file is the first override
    (`train --resume RUN key=value`, `eval RUN key=value`)."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        return None, [recipe, *overrides]
    return recipe, overrides


@app.command()
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file or shipped recipe name (see `eggroll-rl recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides with dot paths, e.g. es.sigma=0.002"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the engine's own output live (default: RUN/engine.log)."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="Trackers, comma-separated: tensorboard, wandb, trackio, mlflow, none."),
) -> None:
    """Train a model with EGGROLL on a recipe."""
    recipe, overrides = split_overrides(recipe, overrides)
    if report_to is not None:
        overrides.append(f"report_to=[{report_to}]")
    try:
        if resume is not None:
            run = RunDir(resume)
            if not RunDir.holds_run(resume):
                fail(f"--resume {resume}: no config.yaml there; give a run directory written by `eggroll-rl train`", 2)
            cfg = run.resume_config(overrides)
        else:
            if recipe is None:
                fail("missing RECIPE; e.g. `eggroll-rl train tiny` (list them: `eggroll-rl recipes list`)", 2)
            path = recipe_path(recipe)
            if not path.is_file():
                fail(unknown_recipe(recipe), 2)
            cfg = load_config(path, overrides)
            run = RunDir.new(cfg, path)
            if run.path.exists() and any(run.path.iterdir()):
                if any(o.partition("=")[0].strip() == "run_name" for o in overrides):
                    fail(f"run directory {run} already exists; continue it with --resume {run} or pick another run_name=", 2)
                # A name the recipe fixes: this run gets a new directory of its own, the old one stays.
                cfg = dataclasses.replace(cfg, run_name=f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
                run = RunDir.new(cfg, path)
    except ConfigError as exc:
        fail(str(exc), 2)

    try:
        from .trainer import train as run_training  # torch, transformers: after the recipe is checked

        quiet_libraries()
        final = run_training(cfg, run, resume=resume is not None, console=console, verbose=verbose)
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: eggroll-rl train --resume {run}", 130)
    except ConfigError as exc:
        fail(str(exc), 2)
    except Exception as exc:  # an engine that died, a full disk, ...: keep the run resumable
        problem = f"training stopped: {type(exc).__name__}: {first_line(exc)}"
        if isinstance(exc, OSError):
            problem += f" (check free space, permissions and file-size limits of output_dir={cfg.output_dir})"
        if not RunDir.holds_run(run.path):  # stopped before the run began: nothing to resume
            fail(problem, 1)
        try:
            where = f" (traceback in {run.write_error(traceback.format_exc())})"
        except OSError:  # the disk that failed the run may refuse the log too
            where = ""
        fail(f"{problem}{where}; checkpoints are intact: continue with eggroll-rl train --resume {run}", 1)
    console.print(f"done: final checkpoint [bold]{final}[/]" if final else
                  f"done: no checkpoint saved (train.final_checkpoint=false); `eggroll-rl export {run} --replay` rebuilds the weights")
    evals = run.read(EVALS)
    if len(evals) >= 2:
        before, after = evals[0], evals[-1]
        table = results_table(
            [(f"before (step {before['step']})", before), (f"after (step {after['step']})", after)],
            title=f"{cfg.data.eval_set} {cfg.data.path}: {after['n']} prompts, greedy",
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
    model: str = typer.Argument(..., help="Alias, local folder, hub id, run directory, checkpoint or PEFT adapter (folder or hub id)."),
    recipe: Optional[str] = typer.Argument(None, help="Recipe (or a run directory: its recipe) for data, prompt, generation and rewards (default: the run's own)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. data.eval_size=200"),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per prompt: 1 = greedy accuracy; k > 1 adds pass@k and maj@k."),
    temperature: float = typer.Option(0.7, help="Sampling temperature when --samples > 1."),
    compare: Optional[str] = typer.Option(None, "--compare", help="A second model (e.g. the base) scored on the same prompts."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL file for every completion: whether it is correct, and its rewards."),
    seed: int = typer.Option(0, help="Sampling seed."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the engine's own output live (default: OUT.engine.log)."),
) -> None:
    """Score a model on a recipe's held-out set with the training grader: accuracy, pass@k, maj@k."""
    recipe, overrides = split_overrides(recipe, overrides)
    if samples < 1:
        fail(f"--samples: got {samples}; expected an integer >= 1", 2)
    if samples > 1:
        overrides += [f"generation.samples_per_prompt={samples}", f"generation.temperature={temperature}"]
    try:
        if recipe is None and not RunDir.holds_run(model):
            from .models import looks_like_path

            if looks_like_path(model):  # a run directory was meant
                what = "not a run directory (no config.yaml)" if Path(model).expanduser().exists() else "not found"
                fail(f"{model}: {what}; give a run directory written by `eggroll-rl train`, or a model and a recipe: "
                     f"`eggroll-rl eval {model} quickstart`", 2)
            fail(f"missing RECIPE: {model} is not a run directory; e.g. `eggroll-rl eval {model} quickstart`", 2)
        if recipe is None or RunDir.holds_run(recipe):  # a run directory's saved recipe
            cfg = RunDir(recipe or model).load_config(overrides)
        elif not recipe_path(recipe).is_file():
            fail(unknown_recipe(recipe), 2)
        else:
            cfg = load_config(recipe_path(recipe), overrides)
    except ConfigError as exc:
        fail(str(exc), 2)

    out = out or Path(cfg.output_dir) / "eval" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    engine_log = None if verbose else out.with_suffix(".engine.log")
    results = []
    try:
        from .engines import evaluate_model  # torch, transformers: after the recipe is checked

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
        where = f" (engine output in {engine_log})" if engine_log is not None and engine_log.is_file() else ""
        fail(f"eval stopped: {type(exc).__name__}: {first_line(exc)}{where}", 1)
    with out.open("w") as f:
        for spec, result in results:
            result.write_jsonl(f, spec)
    summaries = [(spec, r.summary()) for spec, r in results]
    table = results_table(summaries, title=f"eval on {cfg.data.path} ({summaries[0][1]['n']} {cfg.data.eval_set} prompts)")
    if compare:
        add_difference_row(table, summaries[1][1], summaries[0][1])
    console.print(table)
    console.print(f"completions: {out}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="One or more run directories (several are overlaid)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the figures and report.html (default: the run's own; ./report for several)."),
) -> None:
    """Plots and a self-contained report.html of one or more runs: reward, held-out accuracy, time, memory."""
    for run in runs:
        if not RunDir.holds_run(run):
            fail(f"{run}: not a run directory (no config.yaml); give folders written by `eggroll-rl train`", 2)
    from .report import write_report  # matplotlib: only for this command

    try:
        path = write_report(runs, out)
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(f"report: {path}")


recipes_app = typer.Typer(help="The shipped recipes: list them, show one resolved, copy one to start your own.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
def recipes(ctx: typer.Context) -> None:
    """List the shipped recipes with a one-line description each."""
    if ctx.invoked_subcommand is None:
        recipes_list()


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes with a one-line description each."""
    table = Table("recipe", "description", "model")
    for name, path in shipped().items():
        data = load_recipe_dict(path)
        table.add_row(name, str(data.get("description", "")), str(data.get("model", "")))
    console.print(table)


def _shipped_or_fail(name: str) -> Path:
    path = recipe_path(name)
    if not path.is_file():
        fail(unknown_recipe(name), 2)
    return path


@recipes_app.command("show")
def recipes_show(
    name: str = typer.Argument(..., help="A shipped recipe name or a recipe file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides to apply first."),
) -> None:
    """Print the recipe fully resolved: every setting, defaults included, as YAML."""
    try:
        cfg = load_config(_shipped_or_fail(name), list(overrides or []))
        from .prepare import check_names  # the model, data files and rewards it names exist

        check_names(cfg)
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True).rstrip(), markup=False)


@recipes_app.command("cp")
def recipes_cp(
    name: str = typer.Argument(..., help="A shipped recipe name."),
    dest: Path = typer.Argument(..., help="Where to write your copy (a .yaml file)."),
    force: bool = typer.Option(False, "--force", help="Replace DEST if it exists."),
) -> None:
    """Copy a shipped recipe (with its comments) to start your own; its data files come along."""
    source = _shipped_or_fail(name)
    if dest.suffix not in (".yaml", ".yml"):
        fail(f"{dest}: give a .yaml file name", 2)
    if dest.exists() and not force:
        fail(f"{dest} exists; pass --force to replace it, or choose another name", 2)
    # Data files the recipe names relative to itself come along, to the same relative place.
    files = list(data_files(load_recipe_dict(source), source.parent).values())
    clash = [f for f in files if (dest.parent / f).exists() and not force]
    if clash:
        fail(f"{dest.parent / clash[0]} exists; pass --force to replace it, or copy to another folder", 2)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dest.parent / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / f, dest.parent / f)
    shutil.copyfile(source, dest)
    console.print(f"wrote {dest}; train it with: eggroll-rl train {dest}")


app.command()(export)  # export, model card, hub push, replay: its own module (export_cli.py)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
