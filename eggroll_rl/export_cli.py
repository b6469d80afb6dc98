"""`eggroll-rl export`: a run -> a Hugging Face model folder, or with --as-adapter a PEFT LoRA adapter
of the learned change (+ model card), optionally pushed to the Hub.

Registered in cli.py as ``app.command()(export)``. The export itself (the exporting package:
torch, transformers) is imported inside the command, after the arguments are checked.

Exit codes: 0 done; 2 a problem with the arguments or the run (no such step, --out not empty, bad
repo id, no fitness log, --rank with --energy); 1 the push failed (no token, network, HTTP error:
the local export, when one was written, is complete); 130 interrupted (nothing half-written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .adapter import ADAPTER_WEIGHTS, DEFAULT_CHOICE, RankChoice
from .config import ConfigError
from .hub import TOKEN_HELP, HubError, check_repo_id, find_token, hub_endpoint, offline_mode, push_folder
from .terminal import console, fail, quiet_libraries
from .units import human_bytes


def export(
    run_dir: Path = typer.Argument(..., help="Run directory written by `eggroll-rl train` (outputs/<run>)."),
    step: Optional[int] = typer.Option(None, "--step", help="Export the weights after this many steps (default: the last checkpoint; with --replay: the last logged step)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/export, or RUN_DIR/export-step_N)."),
    replay: bool = typer.Option(False, "--replay", help="Rebuild the weights from the run's fitness log (fitness.jsonl) instead of a checkpoint."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="ORG/NAME", help="Upload the folder to this Hub repo (created if needed; token from HF_TOKEN or `hf auth login`)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private (with --push-to-hub)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch to upload to, created if needed (with --push-to-hub; default main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be written/uploaded; write and upload nothing."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    as_adapter: bool = typer.Option(False, "--as-adapter", help="Write a PEFT LoRA adapter of the learned change ΔW (truncated SVD) instead of merged weights (default --out: RUN_DIR/adapter-r16, adapter-e0.99, ...)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="With --as-adapter: this rank for every matrix (capped at the matrix's own)."),
    energy: Optional[float] = typer.Option(None, "--energy", help=f"With --as-adapter: per matrix, the smallest rank keeping this fraction of ΔW's energy (default {DEFAULT_CHOICE.energy:g})."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="With --as-adapter: score the adapter on the run's held-out set next to the merged model."),
) -> None:
    """Export a run as a Hugging Face model folder (weights, tokenizer, model card, plot) or a LoRA adapter; optionally push it."""
    if (private or revision is not None) and not push_to_hub:
        fail("--private and --revision apply to an upload; add --push-to-hub ORG/NAME", 2)
    if push_to_hub:
        problem = check_repo_id(push_to_hub)
        if problem:
            fail(problem, 2)
    if revision is not None and (not revision.strip() or revision != revision.strip() or " " in revision):
        fail(f"--revision: '{revision}' is not a branch name", 2)
    if step is not None and step < 0:
        fail(f"--step: got {step}; expected a step >= 0", 2)
    if (rank is not None or energy is not None) and not as_adapter:
        fail("--rank and --energy choose an adapter's rank; add --as-adapter", 2)
    choice = RankChoice.of(rank, energy) if as_adapter else None
    if choice is not None and choice.problem():
        fail(choice.problem(), 2)

    token, token_source = None, ""
    if push_to_hub and not dry_run:
        if offline_mode():
            fail("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to push; nothing was exported", 1)
        token, token_source = find_token()
        if not token:
            fail(f"--push-to-hub needs a Hugging Face token: {TOKEN_HELP}; nothing was exported", 1)

    from .exporting import MANIFEST, ExportError, export_run  # torch, transformers: after the checks above
    from .replay import ReplayError

    if choice is not None and evaluate and not dry_run:  # an engine will score the adapter
        quiet_libraries()

    try:
        result = export_run(run_dir, out=out, step=step, replay=replay, force=force, repo_id=push_to_hub,
                            dry_run=dry_run, reuse=bool(push_to_hub), adapter=choice, evaluate=evaluate)
    except (ExportError, ReplayError, ConfigError) as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)

    # What was exported
    where = "checkpoint" if result.source == "checkpoint" else "fitness log"
    if result.reused:
        console.print(f"using the existing export of step {result.step} at [bold]{result.out}[/]", highlight=False)
    elif result.written:
        kind = " as a LoRA adapter" if result.adapter else ""
        console.print(f"exported step {result.step} of {run_dir} (from its {where}){kind} -> [bold]{result.out}[/]", highlight=False)
    weights = ADAPTER_WEIGHTS if result.adapter else "model.safetensors"
    console.print(f"  {len(result.files)} files, {human_bytes(result.total_bytes)}; {weights} {human_bytes(result.weights_bytes)}",
                  highlight=False)
    if result.adapter:
        print_adapter_report(result.adapter)
    if result.source == "replay" and not result.reused:
        console.print(f"  replay: {result.step} steps rebuilt from fitness.jsonl in {result.replay_seconds:.1f} s; "
                      + (result.verified or f"no checkpoint of step {result.step} to compare with"), highlight=False)
    if result.fitness_log_bytes or result.checkpoint_bytes:
        ratio = (f" ({result.checkpoint_bytes / result.fitness_log_bytes:,.0f}x smaller)"
                 if result.fitness_log_bytes and result.checkpoint_bytes else "")
        ckpt = f" vs one checkpoint {human_bytes(result.checkpoint_bytes)}" if result.checkpoint_bytes else ""
        console.print(f"  fitness log {human_bytes(result.fitness_log_bytes)} for {result.step} steps{ckpt}{ratio}", highlight=False)
    b, a = result.eval_before, result.eval_after
    if b is not None and a is not None:
        console.print(f"  eval accuracy {b.get('accuracy', float('nan')):.3f} (step 0) -> {a.get('accuracy', float('nan')):.3f} "
                      f"(step {a.get('step')}), n={a.get('n', '?')}", highlight=False)
    for note in result.notes:
        console.print(f"  note: {note}", highlight=False)

    if dry_run:
        what = f"{len(result.files)} files ({human_bytes(result.total_bytes)})"
        target = f"{push_to_hub} (revision {revision or 'main'}{', private' if private else ''}) at {hub_endpoint()}"
        if result.reused:
            plan = f"would upload the {what} of {result.out} to {target}"
        elif push_to_hub:
            plan = f"would write {what} to {result.out} and upload them to {target}"
        else:
            plan = f"would write {what} to {result.out}"
        console.print(f"dry run: {plan}:")
        width = max(len(p) for p, _ in result.files)
        for path, size in result.files:
            console.print(f"  {path:<{width}}  {human_bytes(size):>9}", highlight=False)
        if push_to_hub:
            found, source = find_token()
            console.print(f"token: {'found (' + source + ')' if found else 'none; a real push needs one: ' + TOKEN_HELP}", highlight=False)
        console.print("nothing was written or uploaded", highlight=False)
        return

    if not push_to_hub:
        return
    try:
        pushed = push_folder(result.out, push_to_hub, token=token, private=private, revision=revision,
                             ignore_patterns=[MANIFEST], commit_message="Upload EGGROLL LoRA adapter (eggroll-rl export --as-adapter)"
                             if result.adapter else None)
    except HubError as exc:
        fail(f"{exc}; the export at {result.out} is complete: rerun this command to retry the upload", 1)
    except KeyboardInterrupt:
        fail(f"interrupted during the upload; the export at {result.out} is complete: rerun this command to retry", 130)
    console.print(f"pushed {len(result.files)} files ({human_bytes(result.total_bytes)}) to [bold]{pushed.repo_url}[/] "
                  f"(token from {token_source})", highlight=False)
    if pushed.commit_url:
        console.print(f"  commit: {pushed.commit_url}", highlight=False)


def print_adapter_report(report) -> None:
    """Rank, energy kept, size and held-out accuracy of an adapter export (exporting.AdapterReport)."""
    ranks = f"{report.r} for all {report.matrices} matrices" if report.min_rank == report.r else \
        f"{report.min_rank} to {report.r} over {report.matrices} matrices (PEFT r {report.r} + rank_pattern)"
    vllm = f"vLLM max_lora_rank >= {report.max_lora_rank}" if report.max_lora_rank else "above vLLM's max_lora_rank limit (512)"
    console.print(f"  rank {ranks}; {vllm}", highlight=False)
    console.print(f"  energy of ΔW kept: {report.energy_kept:.2%} overall, worst matrix {report.worst_energy:.2%} "
                  f"({report.worst_matrix})", highlight=False)
    console.print(f"  adapter {human_bytes(report.adapter_bytes)} = {report.adapter_bytes / report.merged_bytes:.1%} of the merged "
                  f"model's weights ({human_bytes(report.merged_bytes)}); base: {report.base_model}", highlight=False)
    a, m = report.eval_adapter, report.eval_merged
    if a is not None:
        merged = f" vs merged weights {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m else ""
        console.print(f"  held-out accuracy (step {a['step']}, n={a['n']}): adapter {a['accuracy']:.3f} "
                      f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}]{merged}", highlight=False)
    if report.difference:
        diff, low, high = report.difference
        console.print(f"  adapter − merged: {diff * 100:+.1f} points [{low * 100:+.1f}, {high * 100:+.1f}] (paired 95% CI)", highlight=False)
