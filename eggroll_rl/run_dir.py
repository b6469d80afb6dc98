"""The run directory: the one module that knows its layout. Everything else asks it.

    outputs/<run>/
        config.yaml                 the resolved recipe (read by --resume, eval, export, replay)
        machine.json                where it ran, as resolved there: backend, device, dtype, noise,
                                    CPU and GPU, versions (one entry per session: resumes append)
        metrics.jsonl               one record per step, "step": updates applied (t+1 for step t)
        samples.jsonl               a few completions per step, "step" as in metrics.jsonl
        eval.jsonl                  held-out evaluations, "step": updates applied (0 = the base)
        fitness.jsonl               {"step": t, "fitness": [N floats]}: the fitness the update of
                                    step t (0-based) used. With the seed it determines the run
                                    (replay.py), so every line is fsynced when written.
        error.log                   the traceback of a run that stopped on an error
        engine.log                  what the inference engine's own processes print (vLLM;
                                    engine-worker<i>.log per worker on a cluster)
        checkpoints/step_000010/    weights after 10 updates (checkpoint.py owns what is inside)

Logs are JSONL and only ever appended. A run killed mid-append leaves a torn last line: readers
skip it, and :meth:`RunDir.truncate_logs` (called on ``--resume``) rewrites each log without it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import is_complete, read_state
from .config import RecipeConfig, load_config, load_recipe_dict, to_dict
from .settings import ConfigError, flatten
from .files import append_line, clean_stale_temporaries, remove_folder, write_text_atomic

CONFIG = "config.yaml"
MACHINE = "machine.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
EVALS = "eval.jsonl"
FITNESS = "fitness.jsonl"
ERROR_LOG = "error.log"
ENGINE_LOG = "engine.log"
CHECKPOINTS = "checkpoints"

# "step" of a record -> updates applied when it was written. fitness.jsonl numbers the step
# whose update it feeds (0-based), the other logs the updates applied after it.
_UPDATES_AFTER_STEP = {METRICS: 0, SAMPLES: 0, EVALS: 0, FITNESS: 1}


# Settings that may change when a run is resumed: they do not change what the run computes, so
# its fitness log still replays it with the saved recipe. Anything else changes the math.
RESUMABLE_CHANGES = ("train.steps", "train.time_budget_minutes", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.final_checkpoint",
                     "train.log_samples", "train.log_completions_every", "generation.max_batch_rows", "generation.compile",
                     "es.master_device", "device",
                     "description", "vllm", "report_to", "cluster")


def resume_change_problem(saved: RecipeConfig, new: RecipeConfig) -> str | None:
    """None if `new` (the saved recipe plus `--resume` overrides) continues the same run, else a
    one-line problem: a change to the math would make the run, and its replay, a mix of two."""
    old, now = flatten(to_dict(saved)), flatten(to_dict(new))
    changed = sorted(k for k in old.keys() | now.keys() if old.get(k) != now.get(k))
    bad = [k for k in changed if not any(k == ok or k.startswith(ok + ".") for ok in RESUMABLE_CHANGES)]
    es = saved.es
    scheduled = es.lr_schedule != "constant" or es.sigma_schedule != "constant"
    if "train.steps" in changed and scheduled:
        bad.append("train.steps (the lr/sigma schedule spans the run's steps)")
    if not bad:
        return None
    return (f"--resume: {', '.join(bad)} would change what the run computes, and its fitness log replays with the saved "
            f"recipe; on resume only {', '.join(RESUMABLE_CHANGES)} may change. To train on with new settings, "
            "start a new run from its last checkpoint: eggroll-rl train RECIPE model=RUN_DIR key=value")


# The names metrics.jsonl used before it took the trackers' (TRL's): "reward_mean", "lr",
# "reward/<f>" and "reward/<f>/missing". Eval records (eval.jsonl) keep theirs; trackers show
# them under these names too.
_OLD_NAMES = {"reward_mean": "reward", "lr": "learning_rate"}


def metric_names(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics or eval record under the names the trackers and TRL use: reward_mean ->
    reward, lr -> learning_rate, reward/<f>[/tail] -> rewards/<f>/(mean|tail); the rest as is."""
    out = {}
    for key, value in record.items():
        key = _OLD_NAMES.get(key, key)
        if key.startswith("reward/"):
            fn, _, tail = key[len("reward/"):].partition("/")
            key = f"rewards/{fn}/{tail or 'mean'}"
        out[key] = value
    return out


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked, explained in one line."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL log ([] when absent). A torn last line (a write cut short) is skipped;
    a bad line anywhere else is corruption: a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")  # the text after the last newline is a torn tail, or ""
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):
                break
            raise RunDirError(f"{path}: line {i} is not valid JSON ({exc.msg}); fix or delete that line") from None
        if i == len(lines):  # valid JSON but no newline: the write may not have finished
            break
        records.append(record)
    return records


class RunDir:
    """outputs/<run>/ of one training run; see the module docstring for the layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def new(cls, cfg: RecipeConfig, recipe: Path | None) -> RunDir:
        """Where a new run of `cfg` goes: output_dir/run_name, or output_dir/<recipe>-<timestamp>."""
        name = cfg.run_name or f"{recipe.stem if recipe else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        return cls(Path(cfg.output_dir) / name)

    @staticmethod
    def holds_run(path: str | Path) -> bool:
        """True if `path` is a run directory written by `eggroll-rl train`."""
        return (Path(path) / CONFIG).is_file()

    # -- the recipe ---------------------------------------------------------------------------

    def save_config(self, cfg: RecipeConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def record_machine(self, info: dict[str, Any]) -> None:
        """Add this session's machine (machine.describe_run) to machine.json."""
        path = self.path / MACHINE
        sessions = json.loads(path.read_text()) if path.is_file() else []
        write_text_atomic(path, json.dumps([*sessions, info], indent=2) + "\n")

    def machines(self) -> list[dict[str, Any]]:
        """The machines the run's sessions ran on (none recorded before machine.json existed)."""
        path = self.path / MACHINE
        return json.loads(path.read_text()) if path.is_file() else []

    def resume_config(self, overrides: list[str] | None = None) -> RecipeConfig:
        """The recipe to continue the run with: the saved one, with only overrides that do not
        change what the run computes (RESUMABLE_CHANGES); RunDirError otherwise."""
        cfg = self.load_config(overrides)
        problem = resume_change_problem(self.load_config(), cfg)
        if problem:
            raise RunDirError(problem)
        return cfg

    def load_config(self, overrides: list[str] | None = None) -> RecipeConfig:
        """The run's saved recipe with `overrides` applied; one-line RunDirError if it has none."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory '{self.path}' not found")
        if not self.holds_run(self.path):
            raise RunDirError(f"{self.path}: no {CONFIG}; give a run directory written by `eggroll-rl train`")
        try:
            saved_es = load_recipe_dict(self.path / CONFIG).get("es")
            # Runs saved before es.noise existed drew their noise with philox-numpy.
            legacy = [] if isinstance(saved_es, dict) and "noise" in saved_es else ["es.noise=philox-numpy"]
            return load_config(self.path / CONFIG, [*legacy, *(overrides or [])])
        except ConfigError as exc:
            raise RunDirError(f"{self.path / CONFIG}: {exc}") from None

    # -- logs ---------------------------------------------------------------------------------

    def append(self, log: str, record: dict[str, Any]) -> None:
        append_line(self.path / log, json.dumps(record), durable=log == FITNESS)

    def read(self, log: str) -> list[dict[str, Any]]:
        """A log's records; metrics under today's names, whatever version wrote them."""
        records = read_jsonl(self.path / log)
        return [metric_names(r) if isinstance(r, dict) else r for r in records] if log == METRICS else records

    def records_upto(self, log: str, updates: int) -> list[dict[str, Any]]:
        """Records of `log` written up to the point where `updates` updates had been applied."""
        offset = _UPDATES_AFTER_STEP[log]
        return [r for r in self.read(log) if isinstance(r, dict) and isinstance(r.get("step"), int)
                and r["step"] + offset <= updates]

    def truncate_logs(self, updates: int | None) -> None:
        """Keep what was logged up to `updates` updates (the checkpoint a resume continues
        from; None: no checkpoint, a fresh start keeps nothing) and drop torn tails; each log is
        rewritten atomically."""
        for log in _UPDATES_AFTER_STEP:
            path = self.path / log
            if path.is_file():
                kept = self.records_upto(log, updates) if updates is not None else []
                write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def fitness_steps(self) -> int:
        """Steps whose fitness is logged (complete lines)."""
        return len(self.read(FITNESS))

    def copy_history(self, dest: Path, updates: int) -> int:
        """Write the recipe and the logs up to `updates` into `dest` as a run directory of its
        own (replayable with `export --replay`); return the bytes of its fitness log."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path / CONFIG, dest / CONFIG)
        for log in (FITNESS, METRICS, EVALS):
            records = self.records_upto(log, updates)
            if records:
                (dest / log).write_text("".join(json.dumps(r) + "\n" for r in records))
        return (dest / FITNESS).stat().st_size if (dest / FITNESS).is_file() else 0

    def fitness_log_bytes(self, steps: int) -> int:
        """Bytes of the first `steps` fitness records as the log stores them."""
        return sum(len(json.dumps(r)) + 1 for r in self.records_upto(FITNESS, steps))

    def write_error(self, text: str) -> Path:
        path = self.path / ERROR_LOG
        path.write_text(text)
        return path

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS / f"step_{step:06d}"

    def checkpoints(self) -> dict[int, Path]:
        """Complete checkpoints, {updates applied: folder}, oldest first."""
        root = self.path / CHECKPOINTS
        found = {}
        for p in root.glob("step_*") if root.is_dir() else ():
            step = p.name.removeprefix("step_")
            if step.isdigit() and is_complete(p):
                found[int(step)] = p
        return dict(sorted(found.items()))

    def latest_checkpoint(self) -> Path | None:
        done = self.checkpoints()
        return done[max(done)] if done else None

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints (0: keep all)."""
        if keep:
            for old in list(self.checkpoints().values())[:-keep]:
                remove_folder(old)
        clean_stale_temporaries(self.path / CHECKPOINTS)

    def recorded_base_and_targets(self) -> tuple[Path, list[str]] | None:
        """(base model folder, target names) as the run recorded them in its newest checkpoint
        whose base model is still on disk; None when no checkpoint records one."""
        for ckpt in reversed(self.checkpoints().values()):
            state = read_state(ckpt)
            base = state.get("base_model")
            if base and (Path(base) / "config.json").is_file() and state.get("targets"):
                return Path(base), list(state["targets"])
        return None
