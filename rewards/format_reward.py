"""Shape rewards: does the completion end with one clearly marked answer; how digit-heavy is it.

``format`` rewards the habit that makes a completion gradable at all (a final ``\\boxed{}`` or
"The answer is X" / "#### X" line); weight it low next to ``math_accuracy``.

``digit_fraction`` is a smoke-test signal, not a task: the random tiny models used in tests and
the tiny recipe never solve a math problem, so accuracy is a flat 0 and ES has nothing to climb.
The fraction of ASCII digits is a dense, easy-to-move reward that shows the whole loop
(generate, score, update) improves *something*.
"""

from __future__ import annotations

import re

from .answers import completion_text, find_final_answer
from .registry import register

# What may follow the final answer on its line: closing delimiters, punctuation and a few words
# ("dollars.", "I hope it is correct."), but no digits (no second answer) and no new lines.
_TAIL = re.compile(r"[^\d\n]{0,40}")


def _well_formatted(text: str) -> bool:
    text = text.rstrip()
    found = find_final_answer(text)
    return (
        found is not None
        and found.kind in ("boxed", "marker")
        and found.answer is not None
        and _TAIL.fullmatch(text[found.end :]) is not None
    )


@register("format")
def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 if the completion ends with a single clearly marked final answer, else 0.0.

    Clearly marked: a ``\\boxed{}``/``\\fbox{}`` or an "answer is X" / "answer: X" / "#### X",
    with one candidate (see :mod:`eggroll_rl.rewards.answers`), followed by at most a short tail of
    punctuation or words on the same line.
    """
    return [float(_well_formatted(completion_text(c))) for c in completions]


@register("digit_fraction")
def digit_fraction(completions: list, **kwargs) -> list[float]:
    """Fraction of characters that are ASCII digits (0.0 for an empty completion).

    A smoke-test reward for random tiny models (see the module docstring), not a task metric.
    """
    texts = [completion_text(c) for c in completions]
    return [sum("0" <= ch <= "9" for ch in t) / len(t) if t else 0.0 for t in texts]
