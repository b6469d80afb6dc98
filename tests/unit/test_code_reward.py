"""Code rewards end to end: extraction, HumanEval / MBPP / stdin-stdout rows, batching, cheats."""

from __future__ import annotations

import json
import time

import pytest

from eggroll_rl import code_tasks
from eggroll_rl.code_tasks import load_humaneval, load_mbpp
from eggroll_rl.rewards.code_programs import build_program, extract_code, humaneval_tests, output_matches
from eggroll_rl.sandbox import Limits, Sandbox
from eggroll_rl.rewards import code_reward
from eggroll_rl.rewards.code_reward import code_tests, code_tests_all_pass, score_code

from support import ROOT

FAST = Limits(timeout_s=3.0, memory_mb=256)


@pytest.fixture(autouse=True)
def fresh_cache():
    code_reward._cache.clear()
    yield
    code_reward._cache.clear()


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def columns(rows, keys=("prompt", "test", "entry_point")):
    return {k: [r[k] for r in rows] for k in keys}


# ----------------------------------------------------------------------------------------
# Extraction


def test_extract_takes_the_last_python_block():
    text = "First try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```\nBye"
    assert extract_code(text) == "def f(): return 2"


def test_extract_prefers_python_over_other_fences():
    text = "```python\nx = 1\n```\nRun it with:\n```bash\npython x.py\n```"
    assert extract_code(text) == "x = 1"
    assert extract_code("```\ny = 2\n```") == "y = 2"


def test_extract_unclosed_fence_and_no_fence():
    assert extract_code("Sure!\n```python\ndef f():\n    return 3") == "def f():\n    return 3"
    assert extract_code("    return x + 1\n") == "    return x + 1\n"


def test_build_program_full_definition_gets_the_prompts_imports(humaneval):
    row = humaneval[0]  # has_close_elements(numbers: List[float], ...) needs `from typing import List`
    body = row["answer"]
    completion = "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body + "```"
    program = build_program(completion, row["prompt"], row["entry_point"])
    assert program.startswith(row["prompt"].rstrip("\n")) and "from typing import List" in program
    compile(program, "p", "exec")


def test_build_program_continuation_and_rambling(humaneval):
    row = humaneval[2]
    assert build_program(row["answer"], row["prompt"], row["entry_point"]) == row["prompt"] + row["answer"]
    rambling = row["answer"] + "\nThis function returns the decimal part.\nHope it helps!\n"
    program = build_program(rambling, row["prompt"], row["entry_point"])
    compile(program, "p", "exec")
    assert "Hope it helps" not in program


def test_build_program_empty_and_chat_format():
    assert build_program("") is None and build_program("   \n") is None and build_program(None) is None
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "```python\nx = 1\n```"}]
    assert build_program(chat) == "x = 1"


def test_output_matching():
    assert output_matches("3\n", "3") and output_matches("1 2  \n\n", "1 2\n")
    assert output_matches("1\r\n2\r\n", "1\n2") and output_matches("1 2", "1\n2")
    assert not output_matches("4\n", "3\n") and not output_matches("", "0")


# ----------------------------------------------------------------------------------------
# HumanEval


def test_humaneval_loads_offline(humaneval):
    assert len(humaneval) == 164
    assert {"question", "answer", "prompt", "test", "entry_point", "task_id"} <= set(humaneval[0])
    assert humaneval[0]["task_id"] == "HumanEval/0"
    assert humaneval[0]["prompt"] in humaneval[0]["question"] and "```python" in humaneval[0]["question"]
    assert len(load_humaneval(limit=3)) == 3


def test_humaneval_steps_count_asserts_only(humaneval):
    row = humaneval[0]
    setup, steps = humaneval_tests(row["prompt"], row["test"], row["entry_point"])
    counted = [s for s in steps if s.counted]
    assert len(counted) == row["test"].count("assert candidate")
    assert "def check" not in setup and "METADATA" in setup
    # `assert True, "..."` lines test nothing and are not counted
    test = "def check(candidate):\n    assert True, 'x'\n    assert candidate() is None\n"
    _, steps = humaneval_tests("def f():\n    pass\n", test, "f")
    assert [s.counted for s in steps] == [False, True]


def test_humaneval_helpers_come_from_the_prompt_not_the_model(humaneval):
    row = humaneval[32]  # find_zero: the test checks poly(coeffs, candidate(coeffs)) == 0
    setup, _ = humaneval_tests(row["prompt"], row["test"], row["entry_point"])
    assert "def poly(" in setup and "def find_zero(" not in setup
    cheat = "```python\ndef poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n```"
    cols = columns([row, row])
    assert code_tests_all_pass([cheat, row["answer"]], **cols) == [0.0, 1.0]


@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass(humaneval):
    start = time.monotonic()
    scores = code_tests([r["answer"] for r in humaneval], **columns(humaneval))
    assert scores == [1.0] * 164, [r["task_id"] for r, s in zip(humaneval, scores) if s != 1.0]
    assert code_tests_all_pass([r["answer"] for r in humaneval], **columns(humaneval)) == [1.0] * 164
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_humaneval_canonical_solutions_as_chat_answers(humaneval):
    rows = humaneval[::4]
    answers = [f"Here is the function:\n\n```python\n{r['prompt']}{r['answer']}```\n\nIt works." for r in rows]
    assert code_tests(answers, **columns(rows)) == [1.0] * len(rows)


def test_humaneval_empty_completions_score_zero(humaneval):
    assert code_tests([""] * 164, **columns(humaneval)) == [0.0] * 164
    assert code_tests_all_pass(["  \n"] * 164, **columns(humaneval)) == [0.0] * 164


def test_humaneval_truncated_solutions_fail(humaneval):
    rows = [humaneval[i] for i in (0, 10, 26, 64, 129)]
    truncated = [r["answer"][: len(r["answer"]) // 2] for r in rows]
    assert code_tests_all_pass(truncated, **columns(rows)) == [0.0] * len(rows)
    assert code_tests_all_pass([r["answer"] for r in rows], **columns(rows)) == [1.0] * len(rows)


@pytest.mark.slow
def test_humaneval_every_truncated_solution_fails(humaneval):
    truncated = [r["answer"][: len(r["answer"]) // 2] for r in humaneval]
    assert score_code(truncated, columns(humaneval), all_pass=True, limits=FAST) == [0.0] * 164


def test_pass_fraction_versus_all_pass(humaneval):
    row = humaneval[0]  # 7 asserts; "close if any pair differs by < threshold", answer False for a few
    wrong = "    return True\n"
    frac = code_tests([wrong], **columns([row]))[0]
    assert 0.0 < frac < 1.0
    assert code_tests_all_pass([wrong], **columns([row])) == [0.0]


# ----------------------------------------------------------------------------------------
# Cheating through the reward


@pytest.mark.parametrize(
    "completion",
    [
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
        "```python\nimport sys\nsys.exit(0)\n```",
        "```python\nclass Yes:\n    def __eq__(self, o): return True\n"
        "def has_close_elements(numbers, threshold):\n    return Yes()\n```",
        "```python\ndef check(candidate):\n    pass\ndef has_close_elements(numbers, threshold):\n    return None\n```",
        "    while True:\n        pass\n",
    ],
    ids=["sys.exit", "os._exit", "exit-at-import", "eq-override", "redefine-check", "loop"],
)
def test_cheats_score_zero(humaneval, completion):
    row = humaneval[0]
    start = time.monotonic()
    assert score_code([completion], columns([row]), limits=FAST) == [0.0]
    assert time.monotonic() - start < FAST.timeout_s + 3


# ----------------------------------------------------------------------------------------
# MBPP and stdin/stdout rows

MBPP_ROWS = [
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n"
        "  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers "
        "using heap queue algorithm.",
        "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n"
        "  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 9001,
        "text": "Write a function to add the constant OFFSET to a number.",
        "code": "def add_offset(x):\n    return x + 10",
        "test_list": ["assert add_offset(1) == 1 + OFFSET", "assert add_offset(-10) == 0"],
        "test_setup_code": "OFFSET = 10",
        "challenge_test_list": [],
    },
]


@pytest.fixture
def mbpp(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return load_mbpp(path)


def test_mbpp_rows(mbpp):
    assert [r["task_id"] for r in mbpp] == [2, 4, 9001]
    assert "similar elements" in mbpp[0]["question"] and mbpp[0]["test_list"][0] in mbpp[0]["question"]
    assert mbpp[2]["test_setup_code"] == "OFFSET = 10"


def test_mbpp_reference_solutions_pass_and_wrong_ones_fail(mbpp):
    cols = columns(mbpp, ("test_list", "test_setup_code"))
    assert code_tests([f"```python\n{r['answer']}\n```" for r in mbpp], **cols) == [1.0, 1.0, 1.0]
    wrong = ["def similar_elements(a, b):\n    return (4, 5)", "def heap_queue_largest(n, k):\n    return n[:k]", ""]
    scores = code_tests(wrong, **cols)
    assert scores[0] == pytest.approx(1 / 3) and scores[1] == 0.0 and scores[2] == 0.0
    assert code_tests_all_pass(wrong, **cols) == [0.0, 0.0, 0.0]


def test_mbpp_rejects_malformed_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "no tests"}) + "\n")
    with pytest.raises(ValueError, match="test_list"):
        load_mbpp(path)


def test_stdin_stdout_rows():
    cols = {"inputs": [["1 2\n", "10 20\n"]] * 4, "outputs": [["3\n", "30\n"]] * 4}
    completions = [
        "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        "a, b = map(int, input().split())\nprint(3)\n",  # right for one case
        "import sys\nprint(sum(map(int, sys.stdin.read().split())))\nsys.exit(0)\n",  # exit 0 is fine here
        "raise SystemExit(1)",
    ]
    assert code_tests(completions, **cols) == [1.0, 0.5, 1.0, 0.0]
    assert code_tests_all_pass(completions, **cols) == [1.0, 0.0, 1.0, 0.0]


def test_stdin_stdout_printing_the_expected_answer_needs_to_know_it():
    cols = {"inputs": [["5\n"]], "outputs": [["25\n"]]}
    assert code_tests(["print(open('/proc/self/cmdline').read())"], **cols) == [0.0]


def test_rows_without_tests_are_not_applicable(humaneval):
    row = humaneval[2]
    cols = {
        "prompt": [row["prompt"], None, None],
        "test": [row["test"], None, None],
        "entry_point": [row["entry_point"], None, None],
        "answer": ["x", "y", "z"],
    }
    assert code_tests([row["answer"], "print(1)", ""], **cols) == [1.0, None, None]


def test_plain_test_module_without_entry_point():
    cols = {"test": ["assert double(2) == 4\nassert double(0) == 0\nassert double(-1) == -2\n"]}
    assert code_tests(["def double(x):\n    return x * 2 if x >= 0 else 0"], **cols) == [pytest.approx(2 / 3)]


# ----------------------------------------------------------------------------------------
# Batching


class CountingSandbox(Sandbox):
    calls = 0

    def run_tests(self, *args, **kwargs):
        CountingSandbox.calls += 1
        return super().run_tests(*args, **kwargs)


def test_identical_completions_run_once_and_results_are_cached(humaneval):
    box = CountingSandbox(limits=FAST, workers=2)
    try:
        row = humaneval[2]
        cols = columns([row] * 6)
        completions = [row["answer"]] * 4 + ["    return 0.0\n"] * 2
        scores = score_code(completions, cols, sandbox=box, limits=FAST)
        assert scores[:4] == [1.0] * 4 and scores[4] < 1.0
        assert CountingSandbox.calls == 2
        assert score_code(completions, cols, sandbox=box, limits=FAST) == scores
        assert CountingSandbox.calls == 2  # cached
    finally:
        box.close()


def test_reward_is_loadable_by_module_path():
    from rewards.registry import get_reward

    assert get_reward("eggroll_rl.rewards.code_reward:code_tests") is code_tests
    assert get_reward("eggroll_rl.rewards.code_reward:code_tests_all_pass") is code_tests_all_pass


def test_humaneval_recipe_validates():
    from eggroll_rl.config import load_config

    cfg = load_config(ROOT / "recipes" / "humaneval.yaml")
    assert cfg.model == "smollm2-135m-instruct" and cfg.data.path == "humaneval"
    assert [r.name for r in cfg.rewards] == ["code_tests"]
    assert cfg.data.question_field == "question" and cfg.data.answer_field == "answer"
    assert code_tasks.HUMANEVAL_INSTRUCTION in load_humaneval(limit=1)[0][cfg.data.question_field]
