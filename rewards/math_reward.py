"""Math accuracy: the extracted final answer equals the gold answer, as judged by math-verify.

math-verify only ever sees two short strings: the gold answer and the completion's extracted
final answer (:mod:`eggroll_rl.rewards.answers`), each wrapped in ``\\boxed{}``. Given free text it hunts
for something to evaluate, and ES found within 4 steps that "71 - 26 = 37" (wrong) is credited
for gold 45 because math-verify evaluates "71 - 26". Here that completion's answer is "37".

Verification runs in a killable worker (:mod:`eggroll_rl.rewards.grading`); identical (gold, answer) pairs
of a batch (an ES population answers the same prompt many times) are graded once, identical
strings never reach math-verify at all, and the worker caches results.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .answers import completion_text, extract_final_answer, gold_answer
from .grading import DEFAULT_TIMEOUT, Grader
from .registry import register

_MV_TIMEOUT = 2  # math-verify's own (signal.alarm) limit per step, inside the worker
_grader: Grader | None = None


@lru_cache(maxsize=4096)
def _parse(answer: str):
    from math_verify import parse

    for wrapped in (f"\\boxed{{{answer}}}", f"${answer}$"):
        parsed = parse(wrapped, parsing_timeout=_MV_TIMEOUT)
        if parsed:
            return parsed
    return []


@lru_cache(maxsize=65536)
def verify_answer(gold: str, pred: str) -> float:
    """1.0 if math-verify finds the answer strings `gold` and `pred` equal, else 0.0."""
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return 0.0
    return float(verify(gold_parsed, pred_parsed, timeout_seconds=_MV_TIMEOUT))


def _preload_math_verify() -> None:
    import logging

    import math_verify  # noqa: F401 - imported before the worker counts as started

    # Its "Timeout during comparison" errors would flood training logs; the grader logs its own.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


def math_grader() -> Grader:
    """The shared worker that runs :func:`verify_answer` (started on first use)."""
    global _grader
    if _grader is None:
        _grader = Grader(verify_answer, timeout=DEFAULT_TIMEOUT, init=_preload_math_verify)
    return _grader


def set_grading_timeout(seconds: float) -> None:
    """Seconds one answer may take to verify before it scores 0 (default 5)."""
    math_grader().timeout = float(seconds)


def grade_answers(pairs: list[tuple[str, str]]) -> list[float]:
    """math-verify scores of (gold, predicted answer) strings; identical strings score 1.0."""
    unique = {p: 1.0 for p in pairs if p[0] == p[1]}
    todo = [p for p in dict.fromkeys(pairs) if p not in unique]
    if todo:
        unique.update(zip(todo, math_grader().map(todo)))
    return [unique[p] for p in pairs]


@register("math_accuracy")
def math_accuracy(completions: list, answer: list, **kwargs) -> list[float | None]:
    """1.0 if a completion's final answer equals its gold `answer` (math-verify), else 0.0.

    No extractable final answer, or several candidates: 0.0. No gold answer: None.
    """
    preds = [extract_final_answer(completion_text(c)) for c in completions]
    golds = [gold_answer(a) for a in answer]
    pairs = [(g, p) for g, p in zip(golds, preds) if g is not None and p is not None]
    scores = iter(grade_answers(pairs))
    return [None if g is None else 0.0 if p is None else next(scores) for g, p in zip(golds, preds)]


_INTEGER = re.compile(r"[+-]?\d+")


def _integer(answer: str | None) -> str | None:
    """`answer` as a canonical integer string ("+07" -> "7"), or None if it is not an integer."""
    return str(int(answer)) if answer is not None and _INTEGER.fullmatch(answer) else None


@register("digit_match")
def digit_match(completions: list, answer: list, **kwargs) -> list[float | None]:
    """Partial credit on integer answers: the share of positions, aligned on the units digit,
    where the final answer's characters (digits and sign) equal the gold's, over the longer of
    the two. 138 for 128: 2/3; 1 for -1: 1/2; exactly right: 1.0; no integer answer: 0.0; a gold
    that is not an integer: None (missing, so weight it next to an accuracy reward).

    A dense signal next to strict accuracy: a wrong sum with the right units digit is closer than
    one with none, and a perturbation that fixes one digit of an answer shows in the fitness.
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        want = _integer(gold_answer(gold))
        if want is None:
            scores.append(None)
            continue
        got = _integer(extract_final_answer(completion_text(completion)))
        if got is None:
            scores.append(0.0)
            continue
        width = max(len(got), len(want))
        same = sum(a == b for a, b in zip(got.rjust(width), want.rjust(width)))
        scores.append(same / width)
    return scores
