"""What a recipe needs before an engine starts: data, rewards, model, targets, checked in one place.

`eggroll-rl train`, `eggroll-rl eval` and replay all start here, so a bad data path, an unknown
reward or a target pattern that matches nothing fails the same way (a one-line ConfigError)
before any run directory is written or any engine is started.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .config import ConfigError, RecipeConfig
from .data import check_local_file, load_rows
from .models import resolve_model
from .params import checkpoint_shapes, select_targets
from .rewards import CombinedReward
from .scoring import recipe_reward
from .tracking import check_installed


def linear_weights(model_dir: Path) -> set[str] | None:
    """Names of the weights of the model's nn.Linear layers, from its architecture alone (built
    on the meta device: no memory, no weights); None if transformers cannot build it."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture this transformers does not know: the backend checks later
        return None
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def model_targets(model_dir: Path, patterns: list[str]) -> list[str]:
    """The weights `patterns` (es.targets) select in `model_dir`; ConfigError if none, or if one
    is not the (out × in) weight of a linear layer: a perturbation x·(W + E)ᵀ and its update are
    only right for those (a GPT-2 Conv1D stores in × out, an embedding is a lookup)."""
    targets = select_targets(checkpoint_shapes(model_dir), patterns)
    if not targets:
        raise ConfigError(f"es.targets: no 2-D weight of {model_dir} matches {patterns}")
    linear = linear_weights(model_dir)
    bad = [t for t in targets if linear is not None and t not in linear]
    if bad:
        raise ConfigError(
            f"es.targets: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} ({len(bad)} of {len(targets)} selected): "
            "not the weight of an nn.Linear layer, and EGGROLL perturbs only those; narrow the patterns "
            "to the attention and MLP projections"
        )
    return targets


def check_cluster(cfg: RecipeConfig) -> None:
    """ConfigError, before any work, for a cluster this machine cannot start."""
    c = cfg.cluster
    if c.workers == 1:
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"cluster.workers={c.workers} needs Ray: pip install 'eggroll-rl[ray]'")
    if c.address is None and c.gpus_per_worker == 0:
        cores = len(os.sched_getaffinity(0))
        if max(c.cpus_per_worker, 1) * c.workers > cores:
            raise ConfigError(f"cluster.workers: {c.workers} local workers of {max(c.cpus_per_worker, 1)} core(s) each need "
                              f"{max(c.cpus_per_worker, 1) * c.workers} cores, this machine has {cores}; lower it, or give cluster.address")


def check_names(cfg: RecipeConfig) -> None:
    """ConfigError for what a recipe names that does not exist, found without loading anything
    heavy (`recipes show`): the model (alias, folder or hub id), local data files, the rewards."""
    from .models import ModelNotFoundError, locate_model
    from .rewards import get_reward

    try:
        locate_model(cfg.model)
    except ModelNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    for key, value in (("data.path", cfg.data.path), ("data.eval_split", cfg.data.eval_split)):
        if value:
            check_local_file(key, value)
    for i, reward in enumerate(cfg.rewards):
        try:
            get_reward(reward.name)
        except ValueError as exc:
            raise ConfigError(f"rewards[{i}].name: {exc}") from None


@dataclass
class RecipeInputs:
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    reward_fn: CombinedReward
    model_dir: Path
    targets: list[str]


def prepare(cfg: RecipeConfig, model_spec: str | None = None) -> RecipeInputs:
    """Load and check everything `cfg` names; `model_spec` replaces cfg.model (eval)."""
    check_installed(cfg.report_to)
    check_cluster(cfg)
    train_rows, eval_rows = load_rows(cfg.data)
    reward_fn = recipe_reward(cfg.rewards)
    model_dir = resolve_model(model_spec or cfg.model)
    return RecipeInputs(train_rows, eval_rows, reward_fn, model_dir, model_targets(model_dir, cfg.es.targets))
