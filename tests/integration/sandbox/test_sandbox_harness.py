"""The sandbox's harness with well-behaved programs: correct programs pass in both modes, results and
exceptions cross as plain data, the report needs the nonce, the pool keeps order, and the child
program ships as one self-contained script that implements the executor protocol."""

from __future__ import annotations

import ast
import inspect
import os
import signal
import stat
import sys

import pytest

from eggroll_rl import sandbox as sbx
from eggroll_rl.sandbox import CodeExecutor, Sandbox, TestCase, child
from eggroll_rl.sandbox.child_wire import plain
from eggroll_rl.sandbox.launcher import child_source, parse_report

from support.sandbox import GOOD, TESTS


def test_correct_program_passes(box):
    res = box.run_tests(GOOD, TESTS)
    assert res.status == "ok" and res.tests == [True, True, True] and res.finished
    assert res.pass_fraction == 1.0 and res.all_passed


def test_partial_program_gets_partial_credit(box):
    res = box.run_tests("def add(a, b):\n    return int(a + b)\n", TESTS)
    assert res.tests == [True, True, False] and res.pass_fraction == pytest.approx(2 / 3)


def test_stdio_program_reads_stdin(box):
    res = box.run_program("a, b = map(int, input().split())\nprint(a + b)\n", stdin="2 40\n")
    assert res.status == "ok" and res.returncode == 0 and res.stdout == "42\n"


def test_exceptions_cross_as_builtin_types(box):
    program = "def div(a, b):\n    if b == 0:\n        raise ValueError('no')\n    return a // b\n"
    tests = ["try:\n    div(1, 0)\n    assert False\nexcept ValueError:\n    pass", "assert div(7, 2) == 3"]
    res = box.run_tests(program, tests)
    assert res.tests == [True, True]


def test_uncounted_setup_step_failing_fails_the_rest(box):
    steps = [TestCase("x = add(1, 2)", counted=False), TestCase("assert x == 3"), TestCase("assert add(0, 0) == 0")]
    res = box.run_tests("def add(a, b):\n    if a == 1:\n        raise KeyError(a)\n    return a + b\n", steps)
    assert res.tests == [False, False]


def test_report_needs_the_nonce():
    spec = {"nonce": "abc", "cases": [("t0", True), ("s", False), ("t2", True)]}
    tests, finished, load_error = parse_report(b"zzz 0 1\nabc 2 1\nabc 0 0\nabc 0 1\nzzz done\n", spec)
    assert tests == [False, True] and not finished and not load_error
    assert parse_report(b"abc 0 1\nabc 2 1\nabc done\n", spec) == ([True, True], True, False)


def test_plain_data_check():
    assert plain([1, 2.5, "s", b"b", None, True, (1,), {1: {2}}, frozenset({3}), 1j])
    assert not plain(type("S", (str,), {})("x"))
    assert not plain([[object()]])
    assert not plain({"k": (lambda: 0)})


def test_referenced_names_skip_builtins():
    assert sbx.referenced_names(["assert abs(f(x)) == len(g(1))", "candidate(2)", "syntax error("]) == ["f", "g", "x"]


def test_map_keeps_order_and_bounds_the_pool(box):
    progs = [(f"def add(a, b):\n    return a + b + {i}\n", [f"assert add(0, 0) == {i}"]) for i in range(6)]
    results = box.map(box.run_tests, progs)
    assert [r.all_passed for r in results] == [True] * 6
    assert box.workers == 2 and box._pool is not None and box._pool._max_workers == 2


def test_sandbox_source_is_self_contained():
    """The child program is shipped as one script: child.py after the sibling modules it imports,
    with no import of the package left and no top-level name defined by two of them."""
    assert callable(child.main)  # imported above without running it
    src = child_source()
    compile(src, "<launcher>", "exec")
    for name in ("main", "confine", "serve", "run_tests", "run_stdio", "plain", "send"):
        assert f"\ndef {name}(" in src
    tree = ast.parse(src)
    imported = [
        (node.level if isinstance(node, ast.ImportFrom) else 0, name)
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
    ]
    assert all(level == 0 and name.partition(".")[0] in sys.stdlib_module_names for level, name in imported)
    defined = [
        target.id if isinstance(node, ast.Assign) else node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node])
    ]
    assert len(defined) == len(set(defined))
    assert stat.S_ISREG(os.stat(sbx.__file__).st_mode)
    assert signal.SIGKILL == 9 and sys.platform.startswith("linux")


def test_sandbox_implements_the_executor_protocol():
    for name in ("run_program", "run_tests", "map", "close"):
        assert inspect.signature(getattr(Sandbox, name)) == inspect.signature(getattr(CodeExecutor, name)), name
    assert isinstance(Sandbox.isolation, property) and isinstance(CodeExecutor.isolation, property)
