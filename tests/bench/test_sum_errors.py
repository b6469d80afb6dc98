"""bench/sum_errors.py: the kinds of two-term sums and the accuracy table of eval files."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from sum_errors import accuracy_by_kind, kind_of  # noqa: E402


def test_kinds_of_sums():
    q = "State the final answer to the following arithmetic problem: {} ="
    assert kind_of(q.format("23 + 45")) == "a+b no carry"
    assert kind_of(q.format("27 + 45")) == "a+b carry"
    assert kind_of(q.format("91 - 45")) == "a-b >= 0"
    assert kind_of(q.format("41 - 45")) == "a-b < 0"
    assert kind_of("What is 3 times 4?") == "other"


def test_table_per_model_and_kind(tmp_path):
    def line(model, question, correct):
        # "reward" is the total of a recipe's rewards: 1.5 for a correct answer weighted 1 plus 0.5 partial credit
        return json.dumps({"model": model, "question": question, "correct": correct, "reward": 1.5 * correct}) + "\n"
    path = tmp_path / "eval.jsonl"
    path.write_text(line("base", "27 + 45 =", False) + line("base", "23 + 45 =", True)
                    + line("trained", "27 + 45 =", True) + line("trained", "23 + 45 =", True) + line("trained", "41 - 45 =", False))
    table = accuracy_by_kind([json.loads(t) for t in path.read_text().splitlines()])
    assert table["base"] == {"a+b carry": (0, 1), "a+b no carry": (1, 1), "all": (1, 2)}
    assert table["trained"]["all"] == (2, 3) and table["trained"]["a-b < 0"] == (0, 1)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sum_errors.py"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {r.split()[0]: r for r in out.stdout.splitlines()[1:]}
    assert rows["trained"].split()[-2:] == ["0.667", "(3)"] and " - " in rows["base"] + " "


def test_a_missing_file_is_named(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sum_errors.py"), str(tmp_path / "nope.jsonl")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "nope.jsonl is not a file" in out.stderr
