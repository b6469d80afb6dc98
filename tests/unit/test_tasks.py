"""reasoning-gym tasks: deterministic disjoint splits, the countdown checker, task_accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym not installed (pip install 'reasoning-gym>=0.1.25')")

from eggroll_rl.config import ConfigError  # noqa: E402
from eggroll_rl.tasks import TaskError, load_task, task_options  # noqa: E402
from eggroll_rl.rewards.task_rewards import (  # noqa: E402
    countdown_correct,
    countdown_expression,
    is_number,
    rebuild_entry,
    score_with_task,
    task_accuracy,
    task_answer,
)

from support import ROOT

TASKS = ["basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic"]


def _questions(rows):
    return [r["question"] for r in rows]


# -- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_rows_are_deterministic_and_disjoint(name):
    train, held = load_task(name, {}, 20, 10, seed=3)
    again_train, again_held = load_task(name, {}, 20, 10, seed=3)
    assert train == again_train and held == again_held
    assert len(train) == 20 and len(held) == 10
    assert not set(_questions(train)) & set(_questions(held))
    assert len(set(_questions(held))) == 10  # no repeats within held-out either
    other_train, _ = load_task(name, {}, 20, 1, seed=4)
    assert _questions(other_train) != _questions(train)


def test_rows_have_the_documented_fields():
    train, held = load_task("chain_sum", {}, 3, 2, seed=0)
    for row in train + held:
        assert set(row) == {"question", "answer", "task", "entry"}
        assert row["task"] == "chain_sum" and isinstance(row["answer"], str)
        entry = json.loads(row["entry"])
        assert entry["question"] == row["question"] and str(entry["answer"]) == row["answer"]
        assert entry["metadata"]["source_dataset"] == "chain_sum"
        assert entry["eggroll_source"]["task"] == "chain_sum"
        assert rebuild_entry(row["entry"])["question"] == row["question"]
    assert train[0]["question"].startswith("State the final answer to the following arithmetic problem:")


def test_same_rows_in_another_process():
    script = (
        "import json, hashlib\n"
        "from eggroll_rl.tasks import load_task\n"
        f"rows = [load_task(n, {{}}, 20, 10, 7) for n in {TASKS!r}]\n"
        "print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import hashlib

    here = [load_task(n, {}, 20, 10, 7) for n in TASKS]
    assert out.stdout.strip() == hashlib.sha256(json.dumps(here, sort_keys=True).encode()).hexdigest()


def test_small_question_space_still_never_overlaps():
    # 2 one-digit terms: a few hundred distinct questions, so train repeats and held-out must skip.
    opts = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    train, held = load_task("chain_sum", opts, 150, 40, seed=0)
    assert len(set(_questions(train))) < 150  # the space is small enough to repeat
    assert not set(_questions(train)) & set(_questions(held))
    assert len(set(_questions(held))) == 40


def test_exhausted_question_space_is_a_clear_error():
    opts = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    with pytest.raises(TaskError) as err:
        load_task("chain_sum", opts, 2000, 500, seed=0)
    assert "distinct held-out questions" in str(err.value) and "\n" not in str(err.value)


def test_options_reach_the_generator():
    train, _ = load_task("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1}, 30, 5, seed=0)
    assert all(json.loads(r["entry"])["metadata"]["num_terms"] == 2 for r in train)
    # YAML gives lists; tuple-valued options accept them
    train, _ = load_task("basic_arithmetic", {"operators": ["+"], "allow_parentheses": False}, 30, 5, seed=0)
    for r in train:
        expr = json.loads(r["entry"])["metadata"]["expression"]
        assert "*" not in expr and "/" not in expr
    assert task_options("countdown")["min_numbers"] == 4


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("chain_sun", {}, "did you mean chain_sum"),
        ("chain_sum", {"max_term": 3}, "did you mean 'max_terms'"),
        ("chain_sum", {"seed": 3}, "data.shuffle_seed"),
        ("chain_sum", {"min_terms": 5, "max_terms": 2}, "rejected options"),
    ],
)
def test_bad_task_or_options_are_one_line_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_task(name, options, 5, 5, seed=0)
    assert "\n" not in str(err.value)


def test_task_checker_scores_gold_and_wrong():
    _, held = load_task("basic_arithmetic", {}, 5, 3, seed=0)
    row = held[0]
    assert score_with_task(row["answer"], row["entry"]) == 1.0
    assert score_with_task(str(int(row["answer"]) + 1), row["entry"]) < 1.0


# -- countdown checker ----------------------------------------------------------------------

NUMS, TARGET = [6, 61, 94, 4], 309


@pytest.mark.parametrize(
    "expr",
    ["94*4 - 61 - 6", "94*4-61-6", "(94*4) - (61 + 6)", "  94 * 4 - 61 - 6  ", "4*94 - (6 + 61)", "-61 + 94*4 - 6"],
)
def test_countdown_accepts_correct_expressions(expr):
    assert countdown_correct(expr, NUMS, TARGET)


@pytest.mark.parametrize(
    "expr, why",
    [
        ("94*4 - 61 + 6", "wrong target"),
        ("94*4 - 61", "not all numbers used"),
        ("94*4 - 61 - 6 + 4 - 4", "4 used three times"),
        ("94*4 - 67", "67 is not given"),
        ("94*4 - 61 - 6*1", "1 is not given"),
        ("94*4 - 61 - 6.0", "a float"),
        ("(94*4 - 61 - 6)**1", "power"),
        ("94*4 - 61 - 6//1", "floor division"),
        ("94*4 - 61 - 6 % 7", "modulo"),
        ("abs(94*4 - 61 - 6)", "a call"),
        ("x + 94*4 - 61 - 6", "a name"),
        ("__import__('os').getpid()", "code"),
        ("94*4 - 61 - 6; 1", "two statements"),
        ("94*4 - 61 - 6 = 309", "an equation is not an expression"),
        ("", "empty"),
        (None, "nothing extracted"),
        ("94*4 - 61 - 6 + 1_0 - 10", "underscore literals"),
    ],
)
def test_countdown_rejects(expr, why):
    assert not countdown_correct(expr, NUMS, TARGET), why


def test_countdown_fractions_and_repeats():
    assert countdown_correct("8/(3-8/3)", [3, 3, 8, 8], 24)  # 8/(1/3): a fraction on the way
    assert not countdown_correct("8/(3-3)*8*3", [3, 3, 8, 8], 24)  # division by zero
    assert countdown_correct("5*5 - 20 + 3", [5, 20, 5, 3], 8)  # a number given twice, used twice
    assert not countdown_correct("5*5 - 20 + 3", [5, 20, 3], 8)  # given once, used twice
    assert countdown_correct("94*4 - 61 - 6", NUMS + [1], TARGET, use_all=False)
    assert not countdown_correct("94*4 - 61 - 6", NUMS + [1], TARGET)  # the task's rule: use all
    assert not countdown_correct("94*4 - 67", NUMS, TARGET, use_all=False)


def test_countdown_accepts_every_gold_solution():
    train, _ = load_task("countdown", {}, 60, 1, seed=1)
    for row in train:
        meta = json.loads(row["entry"])["metadata"]
        assert countdown_correct(row["answer"], meta["numbers"], meta["target"]), row["answer"]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("94*4 = 376\n376 - 61 - 6 = 309\n<answer>94*4 - 61 - 6</answer>", "94*4 - 61 - 6"),
        ("<answer>94*4 - 61 - 6 = 309</answer>", "94*4 - 61 - 6"),
        ("**94 × 4 − 61 − 6 = 309**", "94 * 4 - 61 - 6"),
        ("So \\boxed{94 \\times 4 - 61 - 6}.", "94  * 4 - 61 - 6"),
        ("Try 94*4 - 61 - 6 = 309.\nDone!", "94*4 - 61 - 6"),
        ("<answer>309</answer>", None),
        ("I don't know", None),
    ],
)
def test_countdown_expression_extraction(completion, expected):
    got = countdown_expression(completion)
    assert (got and " ".join(got.split())) == (expected and " ".join(expected.split()))


# -- task_accuracy --------------------------------------------------------------------------


def _grade(rows, completions):
    return task_accuracy(
        completions,
        answer=[r["answer"] for r in rows],
        task=[r["task"] for r in rows],
        entry=[r["entry"] for r in rows],
    )


@pytest.mark.parametrize("name", TASKS)
def test_task_accuracy_on_real_rows(name):
    _, held = load_task(name, {}, 5, 2, seed=0)
    rows, completions, expected = [], [], []
    for row in held:
        gold = row["answer"]
        wrong = "1 + 1" if name == "countdown" else str(int(float(gold)) + 1)
        for text, ok in [
            (f"Let me work it out step by step.\n<answer>{gold}</answer>", 1.0),
            (f"<answer>{wrong}</answer>", 0.0),
            (f"The answer is {gold}.", 1.0),
            ("I am not sure.", 0.0),
        ]:
            rows.append(row)
            completions.append(text)
            expected.append(ok)
    assert _grade(rows, completions) == expected


def test_task_accuracy_uses_the_task_checker_for_text_answers():
    _, held = load_task("spell_backward", {}, 5, 1, seed=0)
    row = held[0]
    gold = row["answer"]
    assert not is_number(gold)
    completions = [f"<answer>{gold}</answer>", f"Final answer: {gold}", "<answer>nope</answer>", f"<answer>{gold}x</answer>"]
    assert _grade([row] * 4, completions) == [1.0, 1.0, 0.0, 0.0]


def test_task_accuracy_without_entry():
    out = task_accuracy(["The answer is 12.", "The answer is 13.", "blue"], answer=["12", "12", "blue"])
    assert out == [1.0, 0.0, None]
    # an entry column that is not ours: numeric golds still graded, the rest not gradable
    out = task_accuracy(["12", "blue"], answer=["12", "blue"], task=[None, None], entry=["not json", "{"])
    assert out == [1.0, None]


def test_task_answer_extraction():
    assert task_answer("blah\n<answer> x </answer>\n<answer>demaes</answer>") == "demaes"
    assert task_answer("The reversed word.\nFinal answer: demaes") == "demaes"
    assert task_answer("just this line\ndemaes") == "demaes"
    assert task_answer("") is None
