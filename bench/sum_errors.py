"""Accuracy by kind of sum, from `eggroll-rl eval --out` files: which sums a model still gets wrong.

    eggroll-rl eval smollm2-135m-instruct recipes/quickstart.yaml --out base.jsonl
    eggroll-rl eval outputs/RUN recipes/quickstart.yaml --compare OTHER --out trained.jsonl
    python bench/sum_errors.py base.jsonl trained.jsonl

For a task of two-term sums (the quickstart's reasoning-gym chain_sum, "... 96 + 22 ="), each
question falls in one kind: a + b without a carry out of the ones, a + b with one, a − b ≥ 0,
a − b < 0. Prints, for every model in the files (the JSONL's `model` field), the accuracy (the
completions eval counts as correct: the recipe's first reward is 1) on each kind and overall, with how many questions each kind holds
(greedy evals, one completion per question; with `--samples k` every sample counts).
Questions of another shape count under "other".
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

KINDS = ["a+b no carry", "a+b carry", "a-b >= 0", "a-b < 0", "other"]
_SUM = re.compile(r"(-?\d+)\s*([+-])\s*(\d+)\s*=\s*$")


def kind_of(question: str) -> str:
    """The kind of the two-term sum a question ends with ("... 96 + 22 =")."""
    m = _SUM.search(question.strip())
    if m is None:
        return "other"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    if op == "+":
        return "a+b carry" if abs(a) % 10 + b % 10 >= 10 else "a+b no carry"
    return "a-b >= 0" if a - b >= 0 else "a-b < 0"


def accuracy_by_kind(lines: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """{model: {kind: (correct, questions)}}, with an "all" kind, for greedy eval lines."""
    table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for line in lines:
        hit = int(line["correct"])
        for kind in (kind_of(line["question"]), "all"):
            table[line["model"]][kind][0] += hit
            table[line["model"]][kind][1] += 1
    return {model: {k: tuple(v) for k, v in kinds.items()} for model, kinds in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="`eggroll-rl eval --out` JSONL files")
    args = parser.parse_args()
    lines = []
    for path in args.files:
        if not path.is_file():
            raise SystemExit(f"sum_errors.py: {path} is not a file; give the JSONL that `eggroll-rl eval --out` wrote")
        lines += [json.loads(text) for text in path.read_text().splitlines() if text.strip()]
    table = accuracy_by_kind(lines)
    kinds = [k for k in KINDS if any(k in t for t in table.values())] + ["all"]
    print(f"{'model':<50}" + "".join(f"{k:>16}" for k in kinds))
    for model, row in table.items():
        print(f"{model[-50:]:<50}" + "".join(f"{_cell(*row.get(k, (0, 0))):>16}" for k in kinds))


def _cell(correct: int, questions: int) -> str:
    return f"{correct / questions:.3f} ({questions})" if questions else "-"


if __name__ == "__main__":
    main()
