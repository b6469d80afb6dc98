"""The recipes shipped with eggroll-rl, installed as package data of ``eggroll_rl.recipes``.

`eggroll-rl recipes` lists them and `eggroll-rl train quickstart` finds one by name from any
directory. A relative data file named in a recipe is relative to the recipe's own folder
(config.py), so `tiny.yaml` finds `data/gsm8k_mini.jsonl` wherever it is installed.
"""

from __future__ import annotations

import difflib
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def shipped() -> dict[str, Path]:
    """{name: recipe file} of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.yaml"))}


def recipe_path(spec: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (`quickstart`, from any directory)."""
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return shipped().get(str(spec), path)


def unknown_recipe(spec: str | Path) -> str:
    """The one-line problem of a recipe that is neither a file nor a shipped name."""
    names = list(shipped())
    close = difflib.get_close_matches(Path(spec).stem, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"recipe '{spec}' not found; {hint}the shipped ones are: {', '.join(names)} (or give a recipe .yaml file)"
