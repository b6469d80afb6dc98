"""Programs and tests from text: a completion becomes a program, a dataset's tests become the
steps the sandbox runs (code_reward.py scores them).

A completion becomes a program like this (:func:`build_program`): take the last fenced
```` ```python ```` block (or the text after an unclosed fence; no fence: the whole text). With a
HumanEval prompt, if that code defines the entry point it follows the prompt (which supplies
the imports and helpers; the new definition replaces the stub), otherwise it continues the
prompt's function body.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from ..sandbox import TestCase
from .answers import completion_text

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3", ""}


# ----------------------------------------------------------------------------------------
# Completions -> programs


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
