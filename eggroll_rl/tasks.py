"""Procedural reasoning tasks from reasoning-gym: fixed-seed train and held-out rows.

`load_task(name, options, train_size, eval_size, seed)` builds rows

    {"question": ..., "answer": <gold string>, "task": name, "entry": <JSON of the reasoning-gym entry>}

for any reasoning-gym dataset (basic_arithmetic, chain_sum, countdown, gsm_symbolic, ...). The
question is reasoning-gym's own text, with whatever answer-format instructions it carries. `entry`
is the whole entry (question, answer, metadata) plus ``eggroll_source`` (task, options, seed,
size, index), so the task's own checker can grade a completion later (eggroll_rl.rewards.task_rewards) and
the exact entry can always be rebuilt (:func:`task_dataset`).

Train and held-out rows come from two seeds derived from (name, seed) with a hash, so they are
the same in every process, and held-out questions that also occur in train (or twice in held-out)
are skipped, so the two sets never overlap.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
from typing import Any

from .config import ConfigError


class TaskError(ConfigError):
    """A procedural-task problem, explained in one line."""


def _rg():
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("data.path: reasoning_gym tasks need the package: pip install 'reasoning-gym>=0.1.25'") from None
    return reasoning_gym


def task_names() -> list[str]:
    """Every reasoning-gym dataset name."""
    _rg()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def task_options(name: str) -> dict[str, Any]:
    """The options of task `name` with their defaults (seed and size are ours to set)."""
    cfg_cls = _config_class(name)
    out = {}
    for f in dataclasses.fields(cfg_cls):
        if f.name in ("seed", "size"):
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


def _config_class(name: str):
    _rg()
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see eggroll_rl.tasks.task_names()"
        raise TaskError(f"data.path: unknown reasoning_gym task '{name}'{hint}")
    return DATASETS[name][1]


def _clean_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Options checked against the task's config; YAML lists become tuples where the default is one."""
    options = dict(options or {})
    defaults = task_options(name)
    for key in ("seed", "size"):
        if key in options:
            raise TaskError(
                f"data.task_options.{key}: set by eggroll-rl; use data.shuffle_seed / data.train_size / data.eval_size instead"
            )
    for key, value in list(options.items()):
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise TaskError(
                f"data.task_options.{key}: not an option of task '{name}'; {hint}options are {', '.join(sorted(defaults))}"
            )
        if isinstance(defaults[key], tuple) and isinstance(value, list):
            options[key] = tuple(value)
    return options


def task_dataset(name: str, options: dict[str, Any], seed: int, size: int):
    """The reasoning-gym dataset a row was drawn from (its `eggroll_source`), cached: graders
    rebuild it to call the task's own checker."""
    return _dataset_cached(name, json.dumps(options, sort_keys=True, default=_plain), seed, size)


@functools.lru_cache(maxsize=64)
def _dataset_cached(name: str, options_json: str, seed: int, size: int):
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(options_json).items()}
    return _make_dataset(name, _clean_options(name, options), seed, size)


def _make_dataset(name: str, options: dict[str, Any], seed: int, size: int):
    rg = _rg()
    try:
        return rg.create_dataset(name, seed=seed, size=size, **options)
    except TaskError:
        raise
    except Exception as exc:  # the task's own validation (AssertionError, ValueError, TypeError)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise TaskError(f"data.task_options: task '{name}' rejected options {options}: {msg}") from None


def derived_seed(name: str, seed: int, split: str) -> int:
    """A 31-bit seed for (task, user seed, split), the same in every process."""
    digest = hashlib.sha256(f"eggroll-rl:{name}:{seed}:{split}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def _plain(x: Any) -> Any:
    """JSON fallback for metadata values: numpy scalars and arrays, sets, anything else as str."""
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=str)
    return str(x)


def _row(name: str, options: dict[str, Any], seed: int, size: int, index: int, entry: dict[str, Any]) -> dict[str, Any]:
    full = dict(entry)
    full["eggroll_source"] = {"task": name, "options": options, "seed": seed, "size": size, "index": index}
    return {
        "question": str(entry["question"]),
        "answer": str(entry["answer"]),
        "task": name,
        "entry": json.dumps(full, default=_plain, sort_keys=True),
    }


def load_task(
    name: str, options: dict[str, Any] | None, train_size: int, eval_size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows) of reasoning-gym task `name`: deterministic and disjoint."""
    if train_size < 1:
        raise TaskError(f"data.train_size: got {train_size}; expected an integer >= 1")
    if eval_size < 0:
        raise TaskError(f"data.eval_size: got {eval_size}; expected an integer >= 0")
    options = _clean_options(name, options)
    train_seed, eval_seed = derived_seed(name, seed, "train"), derived_seed(name, seed, "eval")

    ds = _make_dataset(name, options, train_seed, train_size)
    train = [_row(name, options, train_seed, train_size, i, ds[i]) for i in range(train_size)]

    seen = {r["question"] for r in train}
    held_out: list[dict[str, Any]] = []
    index, size = 0, 2 * eval_size + 64
    cap = 16 * (eval_size + train_size) + 1024
    while len(held_out) < eval_size:
        if index >= size:
            if size >= cap:
                raise TaskError(
                    f"data.eval_size: task '{name}' gave only {len(held_out)} distinct held-out questions not in the "
                    f"{train_size} training ones (out of {index} tried); lower data.eval_size/data.train_size or "
                    "widen data.task_options"
                )
            size = min(size * 4, cap)
        ds = _make_dataset(name, options, eval_seed, size)
        while index < size and len(held_out) < eval_size:
            entry = ds[index]
            if entry["question"] not in seen:
                seen.add(entry["question"])
                held_out.append(_row(name, options, eval_seed, size, index, entry))
            index += 1
    return train, held_out
