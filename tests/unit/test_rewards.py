"""The rewards package: answer extraction, math-verify grading, isolation, registry, combining."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from eggroll_rl import rewards
from eggroll_rl.rewards import (
    combine_rewards,
    extract_final_answer,
    format_reward,
    get_reward,
    gold_answer,
    math_accuracy,
    register,
)
from eggroll_rl.rewards import math_reward
from eggroll_rl.rewards.format_reward import digit_fraction
from eggroll_rl.rewards.grading import Grader, GraderStartupError
from eggroll_rl.rewards.registry import _REGISTRY

from support import FIXTURES

ROWS = [json.loads(line) for line in (FIXTURES / "gsm8k_rows.jsonl").open()]


def _body(row: dict) -> str:
    """A GSM8K solution without its "#### n" line."""
    return row["answer"].rsplit("####", 1)[0].rstrip()


def _gold(row: dict) -> str:
    return row["answer"].rsplit("####", 1)[1].strip().replace(",", "")


# -- extraction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is \\boxed{18}.", "18"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3}, then\nfinally \\fbox{4}", "4"),  # the last box wins
        ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),  # escaped braces inside a box
        ("\\boxed{12} = \\boxed{12}", "12"),  # repeating one value is one candidate
        ("The answer is 18.", "18"),
        ("The answer is: $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The final answer is **42**", "42"),
        ("Answer: -10 degrees", "-10"),
        ("The answer is 18, since the eggs are sold.", "18"),  # comma + words: one answer
        ("The answer is 18, since 9 eggs are sold.", None),  # another number after it: not final
        ("The answer is 45. Wait, so she has 44 clips.", None),  # changed its mind
        ("The answer is 45. So she has 45 clips.", "45"),  # restating it is fine
        ("The answer is:\n\n42", "42"),
        ("#### 7\n", "7"),
        ("The answer is 5 then later #### 6", "6"),  # the LAST marker
        ("The answer is $1,000.00.", "1000.00"),
        ("The answer is 71 - 26 = 37.", "37"),  # an equation chain states its last side
        ("\\boxed{16 - 3 - 4 = 9}", "9"),
        ("\\boxed{71 - 26} = 37", "37"),  # the equation goes on after the box
        ("The answer is $71 - 26$ = 37.", "37"),
        ("\\boxed{y = 2x + 3}", "y = 2x + 3"),  # an equation answer stays whole
        ("The answer is (3, 4).", "(3, 4)"),
        ("The answer is 10%.", "10"),  # a percent sign is a unit, dropped like $
        ("\\boxed{45\\%}", "45"),
        ("she ran 71 - 26 = 37", "37"),  # no marker: the last number
        ("it was 1,250 or so", "1250"),
        ("The answer is that she is happy", None),  # a marker followed by words
        ("no digits here", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 12 or 13.",
        "answer: 3, 4, 5",
        "The answer is $12 or $13",
        "The answer is 12, and 13.",
        "The answer is 12 (or 13)",
        "So \\boxed{12} \\boxed{13}",
        "We get \\boxed{12} or maybe \\boxed{13}.",
        "\\boxed{12 \\text{ or } 13}",
    ],
)
def test_several_candidates_extract_nothing(text):
    assert extract_final_answer(text) is None


def test_boxes_on_earlier_lines_do_not_count_as_candidates():
    assert extract_final_answer("try \\boxed{12}\nno, it is \\boxed{13}") == "13"


def test_gold_answer():
    assert gold_answer(ROWS[0]["answer"]) == "18"
    assert gold_answer("... so\n#### 2,125") == "2125"
    assert gold_answer("\\frac{1}{2}") == "\\frac{1}{2}"
    assert gold_answer(18) == "18"
    assert gold_answer(None) is None and gold_answer("  ") is None


# -- math_accuracy -------------------------------------------------------------------------


def test_gsm8k_solutions_graded_right_in_every_answer_style():
    answers = [r["answer"] for r in ROWS]
    styles = [
        [r["answer"] for r in ROWS],  # the solution text itself, "#### n" ending
        [f"{_body(r)}\nThe answer is {_gold(r)}." for r in ROWS],
        [f"{_body(r)}\nSo the answer is $\\boxed{{{_gold(r)}}}$." for r in ROWS],
        [f"{_body(r)}\n#### {float(_gold(r)):.2f}" for r in ROWS],  # 18.00 vs 18
    ]
    for completions in styles:
        assert math_accuracy(completions, answer=answers, question=["q"] * len(ROWS)) == [
            1.0
        ] * len(ROWS)


def test_gsm8k_wrong_answers_graded_zero():
    answers = [r["answer"] for r in ROWS]
    wrong = [f"{_body(r)}\nThe answer is {int(_gold(r)) + 1}." for r in ROWS]
    assert math_accuracy(wrong, answer=answers) == [0.0] * len(ROWS)
    boxed_wrong = [f"{_body(r)}\n\\boxed{{{int(_gold(r)) * 2 + 1}}}" for r in ROWS]
    assert math_accuracy(boxed_wrong, answer=answers) == [0.0] * len(ROWS)


def test_wrong_equation_hack_scores_zero():
    # ES learned this against free-text grading: math-verify evaluates "71 - 26" = 45.
    row = ROWS[8]
    assert gold_answer(row["answer"]) == "45"
    hacks = [
        f"{_body(row)}\nSo he is 71 - 26 = 37",
        "71 - 26 = 37",
        "The answer is 71 - 26 = 37.",
        "\\boxed{71 - 26 = 37}",
        "So $\\boxed{71 - 26} = 37$ miles.",  # math-verify on this free text says 1.0
        "The answer is $71 - 26$ = 37.",
    ]
    assert math_accuracy(hacks, answer=[row["answer"]] * len(hacks)) == [0.0] * len(hacks)
    # ...while the correct chain is credited.
    assert math_accuracy(["The answer is 71 - 26 = 45."], answer=["45"]) == [1.0]


def test_a_false_equation_of_two_numbers_scores_zero():
    """A probe of adversarial answers found "\\boxed{46 = 45}" credited for gold 45: two numbers
    stated equal are two candidates. An unknown equated to the answer stays right."""
    completions = ["\\boxed{46 = 45}", "The answer is 46 = 45.", "\\boxed{46} = 45", "\\boxed{x = 45}", "\\boxed{45 = 45}"]
    assert [extract_final_answer(c) for c in completions] == [None, None, None, "x = 45", "45"]
    assert math_accuracy(completions, answer=["45"] * 5) == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_a_completion_that_is_not_text_gets_no_credit_and_one_warning(caplog):
    odd = [[1, 2, 45], {"answer": 45}, [3, 45]]
    with caplog.at_level("WARNING"):
        assert math_accuracy(odd, answer=["45"] * 3) == [0.0, 0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if "not text or chat messages" in r.getMessage()]
    assert len(warnings) <= 2 and all("gets no credit" in w for w in warnings)  # once per kind, never per call
    assert math_accuracy([[{"role": "assistant", "content": "\\boxed{45}"}]], answer=["45"]) == [1.0]


def test_several_candidates_score_zero_even_if_one_is_right():
    completions = ["The answer is 45 or 46.", "\\boxed{44} \\boxed{45}", "answer: 44, 45, 46"]
    assert math_accuracy(completions, answer=["#### 45"] * 3) == [0.0, 0.0, 0.0]


def test_money_and_decimals():
    completions = ["The answer is $1,000.00.", "#### 1000", "\\boxed{\\$1,000}", "It costs $999."]
    assert math_accuracy(completions, answer=["1000", "#### 1,000", "1000", "1000"]) == [
        1.0,
        1.0,
        1.0,
        0.0,
    ]
    big = ROWS[-1]  # gold "#### 40,000"
    assert math_accuracy([f"{_body(big)}\nThe answer is $40,000."], answer=[big["answer"]]) == [1.0]


def test_math500_style_gold():
    completions = [
        "The answer is 0.5",
        "\\boxed{\\dfrac{2}{4}}",
        "So $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
        "The answer is 0.25",
    ]
    gold = ["\\frac{1}{2}", "\\frac{1}{2}", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{1}{2}"]
    assert math_accuracy(completions, answer=gold) == [1.0, 1.0, 1.0, 0.0]


def test_no_answer_scores_zero_and_no_gold_is_none():
    assert math_accuracy(["I do not know.", "The answer is 3"], answer=["3", None]) == [0.0, None]


def test_chat_completions_are_read_from_the_last_message():
    chat = [[{"role": "assistant", "content": "The answer is 18."}]]
    assert math_accuracy(chat, answer=["#### 18"]) == [1.0]


def test_expressions_are_evaluated_so_equations_are_cut():
    # Why normalize_answer keeps only the last side of "a = b": math-verify credits "71 - 26".
    assert math_reward.verify_answer("45", "71 - 26") == 1.0
    assert math_reward.verify_answer("45", "37") == 0.0


# -- isolation: hangs and crashes ----------------------------------------------------------


def _flaky(x: str) -> float:
    """A test grading function: "hang" never returns, "crash" kills the worker."""
    if x == "hang":
        time.sleep(3600)
    if x == "crash":
        os._exit(3)
    if x == "raise":
        raise ValueError(x)
    return float(x)


def _verify_or_hang(gold: str, pred: str) -> float:
    if pred == "999999":
        time.sleep(3600)
    return math_reward.verify_answer(gold, pred)


def test_hang_scores_zero_within_the_timeout_and_the_rest_are_graded():
    grader = Grader(_flaky, timeout=1.0)
    try:
        assert grader.map([("1",)]) == [1.0]  # started and warm
        first_pid = grader.pid
        start = time.monotonic()
        scores = grader.map([("1",), ("2",), ("hang",), ("4",), ("5",)])
        elapsed = time.monotonic() - start
        assert scores == [1.0, 2.0, 0.0, 4.0, 5.0]
        assert 1.0 <= elapsed < 1.0 + 4.0  # the timeout, plus one worker restart and slack
        assert grader.restarts == 1 and grader.pid != first_pid
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)  # the hung worker is gone
    finally:
        grader.close()


def test_crash_and_exception_score_zero_and_grading_continues():
    grader = Grader(_flaky, timeout=1.0)
    try:
        start = time.monotonic()
        scores = grader.map([("1",), ("crash",), ("3",), ("raise",), ("5",)])
        assert scores == [1.0, 0.0, 3.0, 0.0, 5.0]
        assert time.monotonic() - start < 8.0
        assert grader.restarts == 1  # the crash; an exception is just a 0
        assert grader.map([("7",)]) == [7.0]  # still usable
    finally:
        grader.close()
    assert grader.pid is None


def test_math_accuracy_survives_a_hanging_verification(monkeypatch):
    grader = Grader(_verify_or_hang, timeout=1.5, init=math_reward._preload_math_verify)
    monkeypatch.setattr(math_reward, "_grader", grader)
    try:
        start = time.monotonic()
        scores = math_accuracy(
            ["The answer is 999999.", "The answer is 18.00", "\\boxed{17}"],
            answer=["#### 18"] * 3,
        )
        assert scores == [0.0, 1.0, 0.0]
        assert time.monotonic() - start < 1.5 + 10.0  # two worker starts on a busy machine
        assert grader.restarts == 1
    finally:
        grader.close()


def test_grader_rejects_unpicklable_and_unimportable_functions(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="module-level"):
        Grader(lambda x: 1.0)
    # Importable here, but its import fails in any other process (the worker).
    (tmp_path / "parent_only_mod.py").write_text(
        f"import os\nif os.getpid() != {os.getpid()}:\n    raise ImportError('not here')\n"
        "def f(x):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from parent_only_mod import f  # type: ignore[import-not-found]

    grader = Grader(f)
    with pytest.raises(GraderStartupError, match="not here"):
        grader.map([(1,)])
    assert grader.pid is None
    monkeypatch.delitem(sys.modules, "parent_only_mod")


# -- format and digit rewards --------------------------------------------------------------


def test_format_reward():
    good = [
        ROWS[0]["answer"],
        "She makes 18 dollars.\nThe answer is 18.",
        "So the total is $\\boxed{18}$ dollars.",
        "Final Answer: The final answer is $18$. I hope it is correct.",
    ]
    bad = [
        "She makes 18 dollars.",  # no marker
        "The answer is 18.\nLet me check: 9 * 2 = 18, yes.",  # the answer is not at the end
        "The answer is 18 or 19.",  # two candidates
        "\\boxed{18} \\boxed{19}",
        "The answer is that she makes money",
        "",
    ]
    assert format_reward(good + bad) == [1.0] * len(good) + [0.0] * len(bad)


def test_digit_fraction():
    assert digit_fraction(["a1b2", "", "1234", "none"]) == [0.5, 0.0, 1.0, 0.0]


def test_digit_match_credits_digits_aligned_on_the_units():
    digit_match = get_reward("digit_match")
    completions = ["The answer is 138.", "1", "-1", "no number", "07", "12", "9 + 3 = 22", "1000"]
    golds = ["128", "-1", "-1", "5", "7", "1/2", "12", "10"]
    assert digit_match(completions=completions, answer=golds) == [2 / 3, 0.5, 1.0, 0.0, 1.0, None, 0.5, 0.25]


# -- registry and combining ----------------------------------------------------------------


def test_get_reward_by_name_and_by_module_path():
    assert get_reward("math_accuracy") is math_accuracy
    assert get_reward("format") is format_reward
    assert get_reward("digit_fraction") is digit_fraction
    assert get_reward("eggroll_rl.rewards.format_reward:digit_fraction") is digit_fraction
    assert set(rewards.registered()) >= {"math_accuracy", "format", "digit_fraction"}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("math_acuracy", ["unknown reward", "did you mean 'math_accuracy'", "digit_fraction"]),
        ("no_such_module_xyz:f", ["'no_such_module_xyz:f'", "cannot import", "importable"]),
        ("eggroll_rl.rewards.format_reward:nope", ["has no function 'nope'", "module.path:function"]),
    ],
)
def test_bad_reward_specs_explain_themselves_in_one_line(spec, words):
    with pytest.raises(ValueError) as err:
        get_reward(spec)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_register_adds_a_named_reward():
    @register("test_length")
    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    try:
        assert get_reward("test_length") is length
        assert combine_rewards([("test_length", 1.0)])(["abc"])[0] == [3.0]
    finally:
        _REGISTRY.pop("test_length")


def _half_none(completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def _all_none(completions, **kwargs):
    return [None] * len(completions)


def _nan(completions, **kwargs):
    return [float("nan")] * len(completions)


def test_combine_rewards_weights_and_skips_none():
    combined = combine_rewards([("digit_fraction", 2.0), (_half_none, 0.5)])
    totals, raw = combined(["12ab", "1234"], answer=["x", "y"], question=["q", "q"])
    assert raw == {"digit_fraction": [0.5, 1.0], "_half_none": [1.0, None]}
    assert totals == [2.0 * 0.5 + 0.5 * 1.0, 2.0 * 1.0]  # None is skipped, not a 0 penalty
    totals, raw = combine_rewards([(_all_none, 1.0)])(["a", "b"])
    assert totals == [0.0, 0.0] and raw == {"_all_none": [None, None]}
    nan = combine_rewards([(_nan, 1.0), ("digit_fraction", 1.0)])
    assert nan(["1"])[0] == [1.0]  # NaN is missing too


def test_combine_rewards_with_math_and_format():
    row = ROWS[0]
    combined = combine_rewards([("math_accuracy", 1.0), ("format", 0.1)])
    totals, raw = combined([row["answer"], "18 maybe"], answer=[row["answer"]] * 2)
    assert raw == {"math_accuracy": [1.0, 1.0], "format": [1.0, 0.0]}
    assert totals == pytest.approx([1.1, 1.0])


def test_combine_rewards_rejects_bad_input():
    with pytest.raises(ValueError, match="twice"):
        combine_rewards([("format", 1.0), ("format", 2.0)])
    with pytest.raises(ValueError, match="unknown reward"):
        combine_rewards([("nope", 1.0)])
    with pytest.raises(ValueError, match="one per completion"):
        combine_rewards([(lambda completions, **kw: [1.0], 1.0)])(["a", "b"])


def test_percent_leniency_and_changed_minds_get_no_credit():
    """math-verify credits 45% and 4500% for gold 45; an early "answer is" is not final."""
    completions = ["\\boxed{45\\%}", "\\boxed{4500\\%}", "The answer is 45. Wait ... so she has 44 clips.",
                   "The answer is 45%.", "\\boxed{0.45}"]
    assert math_accuracy(completions, answer=["45"] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert math_accuracy(["\\boxed{0.45}", "\\boxed{45}"], answer=["45%", "45%"]) == [0.0, 1.0]
