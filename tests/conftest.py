"""Fixtures for every layer (unit, integration, bench): a tiny random model built in the test session,
an isolated model cache. Helpers that are not fixtures live in support/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Model aliases resolve into a per-session cache, never the user's."""
    cache = tmp_path_factory.mktemp("eggroll-cache")
    old = os.environ.get("EGGROLL_RL_CACHE")
    os.environ["EGGROLL_RL_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EGGROLL_RL_CACHE", None)
    else:
        os.environ["EGGROLL_RL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from eggroll_rl.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_targets(tiny_model_dir) -> list[str]:
    from eggroll_rl.config import ESConfig
    from eggroll_rl.params import checkpoint_shapes, select_targets

    return select_targets(checkpoint_shapes(tiny_model_dir), ESConfig().targets)
