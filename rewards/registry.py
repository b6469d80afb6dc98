"""Reward lookup by name or ``module.path:function``, and weighted combination.

A reward is a plain function ``(completions, **columns) -> list[float | None]`` (TRL / open-r1
convention): dataset columns arrive as keyword lists aligned with `completions` (``answer=``,
``question=``, ...), unknown ones are ignored via ``**kwargs``, and None means "cannot score this
sample". Recipes name rewards as strings, so a user reward needs no registration: any importable
``package.module:function`` works.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence

RewardFn = Callable[..., list]
logger = logging.getLogger(__name__)
_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function available to :func:`get_reward` as `name`."""

    def decorate(fn: RewardFn) -> RewardFn:
        _REGISTRY[name] = fn
        return fn

    return decorate


def registered() -> list[str]:
    """The registered reward names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


# Modules of this package whose import registers built-in rewards.
_BUILTIN_MODULES = ("format_reward", "math_reward", "task_rewards", "code_reward")


def _load_builtins() -> None:
    for name in _BUILTIN_MODULES:
        module = f"{__package__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a missing dependency inside it is a real error
                raise


def get_reward(spec: str) -> RewardFn:
    """The reward function named `spec`: a registered name or ``module.path:function``.

    Raises ValueError with a one-line explanation when `spec` names nothing callable.
    """
    if ":" not in spec:
        _load_builtins()
        if spec in _REGISTRY:
            return _REGISTRY[spec]
        close = difflib.get_close_matches(spec, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown reward {spec!r}; {hint}registered: {', '.join(registered())}; "
            "or give a user function as 'module.path:function'"
        )
    module_name, _, attr = spec.partition(":")
    # `python -m` and the REPL import from the current folder, the `eggroll-rl` console script
    # does not (its sys.path[0] is the venv's bin): look there last, so that a local file never
    # shadows an installed package.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is a bad spec
        raise ValueError(
            f"reward {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); "
            "make it importable (install it, or run from the folder that contains it)"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(
            f"reward {spec!r}: module {module_name!r} has no function {attr!r}; "
            "use 'module.path:function' with a function defined in that module"
        )
    return fn


class CombinedReward:
    """A weighted sum of rewards; call it like a reward, get totals and the raw values.

    ``total[i] = sum(weight * value)`` over the rewards that scored sample i; a None (or NaN)
    value is missing and skipped (TRL's nansum), and a sample no reward scored totals 0.0.
    ±inf is missing too, with a warning: it is a bug in the reward, and one infinite value would
    otherwise turn every member's fitness, and so every weight, into NaN. Missing values show up
    as NaN in the raw values (scoring.py), so the trainer logs how many there were.
    """

    def __init__(self, specs: Sequence[tuple[str | RewardFn, float]]) -> None:
        if not specs:
            raise ValueError("combine_rewards needs at least one (reward, weight) pair")
        self.names: list[str] = []
        self.fns: list[RewardFn] = []
        self.weights: list[float] = []
        for spec, weight in specs:
            name = spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))
            if name in self.names:
                raise ValueError(f"reward {name!r} is listed twice; give it one weight")
            self.names.append(name)
            self.fns.append(get_reward(spec) if isinstance(spec, str) else spec)
            self.weights.append(float(weight))

    def __call__(
        self, completions: list, **columns
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        raw: dict[str, list[float | None]] = {}
        for name, fn in zip(self.names, self.fns):
            values = list(fn(completions=completions, **columns))  # all by keyword, as TRL calls them
            if len(values) != len(completions):
                raise ValueError(
                    f"reward {name!r} returned {len(values)} values for {len(completions)} "
                    "completions; it must return one per completion"
                )
            raw[name] = [None if v is None or not math.isfinite(v) else float(v) for v in values]
            infinite = sum(1 for v in values if v is not None and math.isinf(v))
            if infinite:
                logger.warning("reward %r returned ±inf for %d of %d completions; counted as missing (0)",
                               name, infinite, len(values))
        totals = [
            sum(w * raw[n][i] for n, w in zip(self.names, self.weights) if raw[n][i] is not None)
            for i in range(len(completions))
        ]
        return [float(t) for t in totals], raw

    def __repr__(self) -> str:
        terms = " + ".join(f"{w:g}*{n}" for n, w in zip(self.names, self.weights))
        return f"CombinedReward({terms})"


def combine_rewards(specs: Sequence[tuple[str | RewardFn, float]]) -> CombinedReward:
    """Combine ``[(reward spec, weight), ...]`` into one callable (see :class:`CombinedReward`)."""
    return CombinedReward(specs)
