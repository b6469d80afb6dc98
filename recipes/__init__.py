"""The recipes shipped with eggroll-rl, installed as package data of ``eggroll_rl.recipes``.

`eggroll-rl recipes` lists them and `eggroll-rl train quickstart` finds one by name from any
directory. A relative data file named in a recipe is relative to the recipe's own folder
(config.py), so `tiny.yaml` finds `data/gsm8k_mini.jsonl` wherever it is installed.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def shipped() -> dict[str, Path]:
    """{name: recipe file} of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.yaml"))}
