"""Final-answer extraction: the one short string a completion commits to, or None.

Why this exists: a grader handed free text finds *something* to evaluate. Given a whole
completion, math-verify evaluated the left side of "71 - 26 = 37" (= 45) and credited it; ES
learned to write such wrong equations within 4 steps. So graders only ever see the string
returned here.

Where the final answer is, first rule that applies:

1. **Boxed**: the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced).
2. **Marker**: the last "answer is" / "answer:" / "####"; the answer is the single number or
   math expression right after it (on the same line, or the next non-empty one). A marker
   followed by words ("the answer is that she ...") gives None, not a guess.
3. **Last number** in the text.

Several candidates get no credit (None). The rule:

* boxed: the line that holds the last box holds another box with a different content
  (``\\boxed{12} or \\boxed{13}``), or the last box says "or" (``\\boxed{12 \\text{ or } 13}``);
  repeating the same value (``\\boxed{12} = \\boxed{12}``) is fine;
* marker: the expression is followed by a separator (``,`` ``;`` "or" "and") and another
  number or expression: "12 or 13", "3, 4, 5", "$12 or $13", "12, and 13". A comma followed by
  words ("18, since the eggs are sold") is fine. Answers that are themselves lists belong in a box, where
  math-verify compares them as sets/tuples.
* marker: a different number anywhere after the marked answer: the completion went on and may
  have changed its mind ("The answer is 45. Wait ... so she has 44 clips."), so the marked
  answer is not final. Repeating it ("... is 45. So 45 clips.") is fine.

Normalization of the extracted string: ``$`` delimiters and escaped dollars, ``\\(`` ``\\)``,
markdown bold, trailing punctuation and a trailing percent sign are dropped (a percent sign is a
unit, like $: math-verify never sees it, because its percent leniency credits both "45%" and
"4500%" for gold 45, and "0.45" for gold "45%"); thousands separators in a plain number are
removed ("1,000.00" -> "1000.00"); an equation chain whose second-to-last side is pure
arithmetic (no letters) keeps its last side, the stated result: "71 - 26 = 37" -> "37",
"16 - 3 - 4 = 9" -> "9", while "x^2 + y^2 = 1" and "y = 2x + 3" stay whole; a number equated to
a different number ("46 = 45") states two candidates: None. An equation that
goes on after the box or marked answer counts too: "\\boxed{71 - 26} = 37" -> "37" (math-verify
given that free text credits it for gold 45: it picks the box and evaluates it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)

# -- building blocks -----------------------------------------------------------------------

_NUM = r"\d{1,3}(?:,\d{3})+(?![\d])(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_BRACES = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"  # up to three levels of nesting
_ATOM = (
    rf"(?:{_NUM}"
    rf"|\\[a-zA-Z]+(?:\s*{_BRACES})*"  # \frac{1}{2}, \sqrt{3}, \pi
    rf"|{_BRACES}"
    r"|\((?:[^()]|\([^()]*\))*\)"  # (3, 4)
    r"|\[[^\[\]]*\]"
    r"|[a-zA-Z](?![a-zA-Z])"  # a variable or a choice letter, never the start of a word
    r"|\\?%|'"
    r")"
)
# \cdot, \times, \le, \text (units) ..., and "x" as in "5 x 3".
_OP = r"(?:[-+*/^_=<>×÷·]|\\[a-zA-Z]+|[xX](?=[ \t]*\d))"
_EXPR = re.compile(rf"[-+]?(?:{_ATOM})+(?:[ \t]*{_OP}[ \t]*[-+]?(?:{_ATOM})+)*")
# What may sit between a marker and its answer: space, markdown bold, $ and \( \[ delimiters.
_LEAD = re.compile(r"(?:\s|\*\*|\\?\$|\\\(|\\\[|:)*")
# A second candidate after the first: a separator, then something that starts a number/expression.
# (Written without two adjacent [ \t]* that could split one run of spaces: that is quadratic.)
_ANOTHER = re.compile(
    r"[ \t]*(?:\([ \t]*)?(?:,|;|\bor\b|\band\b)(?:[ \t]|\*\*|\\?\$|\\\(|\b(?:or|and)\b)*"
    r"[-+]?(?:\d|\.\d|\\[a-zA-Z])",
    re.IGNORECASE,
)
_MARKER = re.compile(r"\banswer\s*(?:is\s*:?|:)|####", re.IGNORECASE)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LAST_NUMBER = re.compile(rf"(?:(?<![\w)\]}}])-)?(?:{_NUM})")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_EQUALS = re.compile(r"(?<![<>!=\\])=(?!=)")
# An equation that continues after a box or answer: "\boxed{71 - 26} = 37", "$71 - 26$ = 37".
_GOES_ON = re.compile(r"(?:\$|\\\)|\*\*|[ \t])*=(?!=)(?:\$|\\\(|\*\*|[ \t])*")


@dataclass(frozen=True)
class FinalAnswer:
    """Where a completion states its final answer.

    ``answer`` is the normalized answer, None when the completion names several candidates;
    ``kind`` is "boxed", "marker" or "number"; ``end`` is the offset just after the answer
    (after the closing brace of a box) in the original text.
    """

    answer: str | None
    kind: str
    end: int


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each top-level \\boxed{...}/\\fbox{...} with balanced braces."""
    found, pos = [], 0
    while m := _BOX.search(text, pos):
        i, depth = m.end(), 1
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2  # \{ and \} are literal braces, not grouping
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:  # unbalanced: no more complete boxes after this one
            break
        found.append((m.start(), i, text[m.end() : i - 1]))
        pos = i
    return found


def _plain_number(text: str) -> float | None:
    """The value of a plain number ("45", "-1,000.5"), or None for anything else."""
    text = text.strip().replace(",", "") if _THOUSANDS.fullmatch(text.strip()) else text.strip()
    return float(text) if re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", text) else None


def _two_numbers(left: str, right: str) -> bool:
    """True for "46 = 45": two different plain numbers stated equal (candidates, not a result)."""
    a, b = _plain_number(left), _plain_number(right)
    return a is not None and b is not None and a != b


def normalize_answer(answer: str) -> str | None:
    """Clean an extracted or gold answer string (see the module docstring); None if empty."""
    s = answer.strip()
    s = re.sub(r"\\\$|\$|\\\(|\\\)|\\\[|\\\]|\*\*", "", s)
    s = re.sub(r"\\[,!; ]", "", s).replace("{,}", ",").strip()
    s = s.rstrip(" \t\n.,;:")
    s = re.sub(r"\s*\\?%$", "", s)
    sides = _EQUALS.split(s)
    if len(sides) >= 2 and sides[-1].strip():
        # \frac{1}{2}, \pi and "5 x 3" count as arithmetic
        left = re.sub(r"\\[a-zA-Z]+|(?<=\d)\s*[xX](?=\s*\d)", "", sides[-2])
        if not re.search(r"[a-zA-Z]", left):
            if _two_numbers(sides[-2], sides[-1]):
                return None
            s = sides[-1].strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s or None


def _from_box(text: str) -> FinalAnswer | None:
    boxes = _boxes(text)
    if not boxes:
        return None
    start, end, content = boxes[-1]
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    answer, end = _stated_result(text, content, end)
    same_line = {normalize_answer(c) for s, e, c in boxes if s >= line_start and e <= line_end}
    if len(same_line) > 1 or re.search(r"\bor\b", content):
        answer = None
    return FinalAnswer(answer, "boxed", end)


def _from_marker(text: str) -> FinalAnswer | None:
    markers = list(_MARKER.finditer(text))
    if not markers:
        return None
    pos = _LEAD.match(text, markers[-1].end()).end()
    m = _EXPR.match(text, pos)
    if not m:
        return FinalAnswer(None, "marker", pos)
    if _ANOTHER.match(text, m.end()):
        return FinalAnswer(None, "marker", m.end())
    answer, end = _stated_result(text, m.group(), m.end())
    if any(normalize_answer(n.group()) != answer for n in _LAST_NUMBER.finditer(text, end)):
        answer = None  # it went on to state another number: not its final answer
    return FinalAnswer(answer, "marker", end)


def _stated_result(text: str, answer: str, end: int) -> tuple[str | None, int]:
    """`answer`, or the last side of an equation that goes on after it, normalized."""
    while (eq := _GOES_ON.match(text, end)) and (m := _EXPR.match(text, eq.end())):
        if _two_numbers(normalize_answer(answer) or "", normalize_answer(m.group()) or ""):
            return None, m.end()
        answer, end = m.group(), m.end()
    return normalize_answer(answer), end


def find_final_answer(text: str) -> FinalAnswer | None:
    """The final answer of `text` and where it is, by the rules above; None if there is none."""
    found = _from_box(text) or _from_marker(text)
    if found:
        return found
    numbers = list(_LAST_NUMBER.finditer(text))
    if not numbers:
        return None
    return FinalAnswer(normalize_answer(numbers[-1].group()), "number", numbers[-1].end())


def extract_final_answer(text: str) -> str | None:
    """The normalized final answer of `text`, or None (no answer, or several candidates)."""
    found = find_final_answer(text)
    return found.answer if found else None


def gold_answer(answer: object) -> str | None:
    """The gold final answer: GSM8K's "... #### 18" -> "18"; otherwise the (normalized) string.

    MATH-500 style golds (``\\frac{1}{2}``, ``(3, \\frac{\\pi}{2})``) pass through unchanged but
    for whitespace, ``$`` and thousands separators. None/empty -> None.
    """
    if answer is None:
        return None
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return normalize_answer(text)


def completion_text(completion: object) -> str:
    """The text of a completion: a string, or the last message of a chat (TRL's format); a
    missing completion or message content (None) is the empty text. Anything else (a list of
    numbers, a dict) is no text: it gets no credit, with one warning per kind, rather than being
    graded by the numbers its repr happens to show."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        completion = completion[-1].get("content")
    if completion is None:
        return ""
    if not isinstance(completion, str):
        _warn_not_text(type(completion).__name__)
        return ""
    return completion


@lru_cache(maxsize=None)
def _warn_not_text(kind: str) -> None:
    logger.warning("a reward was given a completion of type %s, not text or chat messages: it gets no credit "
                   "(rewards grade completions as TRL passes them: strings, or lists of message dicts)", kind)
