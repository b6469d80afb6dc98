"""Accuracy on procedural reasoning-gym tasks (rows from :mod:`eggroll_rl.tasks`).

``task_accuracy`` grades each completion against its row (``answer=``, ``task=``, ``entry=``):

* **countdown**: our own strict checker, :func:`countdown_correct`, on the expression the
  completion commits to (:func:`countdown_expression`);
* **a numeric gold answer** ("-4", "288", "2.5"): :func:`eggroll_rl.rewards.math_reward.math_accuracy`
  (math-verify on the extracted final answer);
* **anything else**: the task's own reasoning-gym ``score_answer`` on the extracted answer, run in
  a killable worker (:mod:`eggroll_rl.rewards.grading`); its score counts as correct only when it is 1.0.

reasoning-gym's system prompts ask for the final answer inside ``<answer>...</answer>``; when a
completion has such tags, only the content of the last pair is graded.

Countdown rules (reasoning-gym's: "using all of these numbers", each at most once, and its own
checker requires the multiset of numbers used to equal the one given): the expression uses
only integers, ``+ - * /``, parentheses and unary minus (reasoning-gym's own solutions contain
it, e.g. ``-1 + 72*(89 - 77)``); every given number exactly once (``use_all=False``: at most
once), no other number; evaluated exactly with fractions (intermediate fractions are fine), it
must equal the target. Parsed with :mod:`ast`, never ``eval``.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from ..tasks import TaskError, task_dataset
from .answers import completion_text, find_final_answer
from .grading import DEFAULT_TIMEOUT, Grader
from .math_reward import math_accuracy
from .registry import register

MAX_EXPRESSION_CHARS = 300

# -- countdown ------------------------------------------------------------------------------

_ALLOWED_CHARS = re.compile(r"[\d\s+\-*/()]+")
_BIN_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right  # ZeroDivisionError is caught by the caller
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, used)
    raise ValueError(f"not allowed in countdown: {type(node).__name__}")


def countdown_value(expression: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integers used in order) of an arithmetic expression, or None if it is not
    one: only integers, + - * /, parentheses and unary minus are allowed."""
    expr = expression.strip()
    if not expr or len(expr) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []
    try:
        value = _evaluate(tree, used)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    return value, used


def countdown_correct(expression: str | None, numbers: list[int], target: int | Fraction, use_all: bool = True) -> bool:
    """True if `expression` reaches `target` exactly with the given `numbers`.

    Each given number may be used once (a number given twice, twice); with `use_all` (the
    reasoning-gym rule) every one of them must be used. No other numbers, no ``**``, ``//``,
    ``%``, names, calls or floats.
    """
    if expression is None:
        return False
    result = countdown_value(expression)
    if result is None:
        return False
    value, used = result
    given, took = Counter(int(n) for n in numbers), Counter(used)
    if use_all and took != given:
        return False
    if not use_all and any(took[n] > given[n] for n in took):
        return False
    return value == Fraction(target)


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_EXPR_RUN = re.compile(r"[\d\s+\-*/()]*\d[\d\s+\-*/()]*")
_REPLACE = [
    (re.compile(r"\\times|\\cdot|×|·|⋅|∗"), "*"),
    (re.compile(r"\\div|÷|∕"), "/"),
    (re.compile(r"[−–—]"), "-"),
    (re.compile(r"\\left|\\right|\\[()\[\]]|\$|`"), ""),
    (re.compile(r"[\[{]"), "("),
    (re.compile(r"[\]}]"), ")"),
    (re.compile(r"(^|\s)\*\*|\*\*(\s|$)"), r"\1\2"),  # markdown bold around the expression
]


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair (stripped), or None if there is none."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def _expression_in(text: str) -> str | None:
    """The arithmetic expression a piece of text states: "94*4 - 61 - 6 = 309" -> "94*4 - 61 - 6"."""
    s = text
    for pattern, repl in _REPLACE:
        s = pattern.sub(repl, s)
    best = None
    for side in s.split("="):
        for run in _EXPR_RUN.findall(side):
            run = run.strip()
            if re.search(r"[+\-*/]", run.lstrip("-")) and (best is None or len(run) > len(best)):
                best = run
    return best


def countdown_expression(completion: str) -> str | None:
    """The one expression a countdown completion commits to, or None.

    The content of the last ``<answer>`` tags if there are any; else of the last ``\\boxed{}``;
    else of the last line that holds an expression (an operator between numbers).
    """
    text = completion_text(completion)
    tagged = answer_tag(text)
    if tagged is not None:
        return _expression_in(tagged)
    boxes = _BOXED.findall(text)
    if boxes:
        return _expression_in(boxes[-1])
    for line in reversed(text.strip().splitlines()):
        found = _expression_in(line)
        if found is not None:
            return found
    return None


# -- other reasoning-gym tasks ----------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_MARKER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]?\s*(.+)$", re.IGNORECASE)


def is_number(gold: object) -> bool:
    """A gold answer that math-verify should grade: an integer, decimal or fraction."""
    return gold is not None and _NUMBER.fullmatch(str(gold).strip().replace(",", "")) is not None


def task_answer(completion: str) -> str | None:
    """The final answer of a completion, for the task's own checker.

    ``<answer>`` tags; else a ``\\boxed{}`` or "answer is/answer:" final answer (eggroll_rl.rewards.answers);
    else the rest of the last line that says "answer"; else the last non-empty line.
    """
    text = completion_text(completion)
    tagged = answer_tag(text)
    if tagged is not None:
        return tagged
    found = find_final_answer(text)
    if found is not None and found.kind in ("boxed", "marker") and found.answer:
        return found.answer
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _MARKER_LINE.search(line)
        if m:
            return m.group(1).strip().strip("*").strip() or None
    return lines[-1] if lines else None


@functools.lru_cache(maxsize=4096)
def parse_entry(entry_json: str) -> dict[str, Any]:
    """The reasoning-gym entry of a row (cached: rewards see the same row once per member)."""
    return json.loads(entry_json)


def _source_dataset(entry: dict[str, Any], task: str | None):
    src = entry.get("eggroll_source") or {}
    name = src.get("task") or task or (entry.get("metadata") or {}).get("source_dataset")
    if not name:
        raise TaskError("entry: no task name; rows need a 'task' column or an entry from eggroll_rl.tasks")
    index = int(src.get("index", 0))
    ds = task_dataset(name, src.get("options") or {}, int(src.get("seed", 0)), int(src.get("size", index + 1)))
    return ds, index


def rebuild_entry(entry_json: str, task: str | None = None) -> dict[str, Any]:
    """The original entry (with its Python types) regenerated from its eggroll_source."""
    ds, index = _source_dataset(parse_entry(entry_json), task)
    return ds[index]


def score_with_task(answer: str | None, entry_json: str, task: str | None = None) -> float:
    """reasoning-gym's own `score_answer` for an extracted answer (its scale: 1.0 = correct)."""
    entry = parse_entry(entry_json)
    ds, _ = _source_dataset(entry, task)
    try:
        return float(ds.score_answer(answer, entry))
    except Exception:  # metadata that JSON could not carry exactly: grade against the rebuilt entry
        return float(ds.score_answer(answer, rebuild_entry(entry_json, task)))


def _task_grade(answer: str | None, entry: str, task: str | None) -> float:
    """1.0 if reasoning-gym's own checker gives full marks (runs inside the grading worker).

    Exactly 1.0: partial-credit sums can land a hair under it (spell_backward gives
    0.9999999999999999 to "demaesx" for "demaes"), and that is not a correct answer.
    """
    return 1.0 if score_with_task(answer, entry, task) >= 1.0 else 0.0


def _preload_reasoning_gym() -> None:
    import reasoning_gym  # noqa: F401 - imported before the worker counts as started


_grader: Grader | None = None


def task_grader() -> Grader:
    """The shared worker that runs reasoning-gym checkers (started on first use)."""
    global _grader
    if _grader is None:
        _grader = Grader(_task_grade, timeout=DEFAULT_TIMEOUT, init=_preload_reasoning_gym)
    return _grader


def _metadata(entry: str | None) -> dict | None:
    """The metadata of a row's reasoning-gym entry; None if the row has no (readable) entry."""
    if not entry or not isinstance(entry, str):
        return None
    try:
        parsed = parse_entry(entry)
    except ValueError:
        return None
    meta = parsed.get("metadata") if isinstance(parsed, dict) else None
    return meta if isinstance(meta, dict) else {}


def _countdown_problem(meta: dict | None) -> tuple[list[int], int] | None:
    if not meta or "numbers" not in meta or "target" not in meta:
        return None
    return [int(n) for n in meta["numbers"]], int(meta["target"])


@register("task_accuracy")
def task_accuracy(completions: list, answer: list, task: list | None = None, entry: list | None = None, **kwargs) -> list[float | None]:
    """1.0 if a completion solves its reasoning-gym task, else 0.0; None where a row cannot be graded.

    Countdown: :func:`countdown_correct`. Numeric gold answers: ``math_accuracy``. Others: the
    task's own checker (full marks only). Rows without an entry and with a non-numeric gold: None.
    """
    n = len(completions)
    tasks = list(task) if task is not None else [None] * n
    entries = list(entry) if entry is not None else [None] * n
    texts = [completion_text(c) for c in completions]
    out: list[float | None] = [None] * n
    math_idx, checker_idx = [], []
    for i in range(n):
        meta = _metadata(entries[i])
        name = (meta or {}).get("source_dataset") or tasks[i]
        problem = _countdown_problem(meta) if name == "countdown" else None
        if problem is not None:
            numbers, target = problem
            out[i] = float(countdown_correct(countdown_expression(texts[i]), numbers, target))
        elif is_number(answer[i]):
            math_idx.append(i)
        elif meta is not None:
            checker_idx.append(i)
    if math_idx:
        # Graded on the tagged answer when there is one, so text after the tags cannot interfere.
        graded = [answer_tag(texts[i]) if answer_tag(texts[i]) is not None else texts[i] for i in math_idx]
        for i, score in zip(math_idx, math_accuracy(graded, [answer[i] for i in math_idx])):
            out[i] = score
    if checker_idx:
        items = [(task_answer(texts[i]), entries[i], tasks[i]) for i in checker_idx]
        unique = list(dict.fromkeys(items))
        scores = dict(zip(unique, task_grader().map(unique)))
        for i, item in zip(checker_idx, items):
            out[i] = scores[item]
    return out
