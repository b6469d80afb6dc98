"""Code correctness: run the completion's program against the row's tests, in the sandbox.

Two rewards (plain functions; the registry names them ``code_tests`` and ``code_tests_all_pass``):

* ``code_tests``: the fraction of tests passed, in [0, 1]. Denser signal for ES.
* ``code_tests_all_pass``: 1.0 only when every test passes (HumanEval's pass@1), else 0.0.

Which tests, by the row's columns (lists aligned with `completions`, TRL style):

* HumanEval: ``prompt``, ``test`` (defines ``check(candidate)``), ``entry_point``. Each
  assert statement of ``check`` is one test (see :func:`.code_programs.humaneval_tests`).
* MBPP: ``test_list`` (assert strings, one test each), optional ``test_setup_code``.
* a ``test`` module of top-level asserts without ``entry_point``: each assert is a test.
* stdin/stdout: ``inputs`` and ``outputs`` (lists of strings): one run per case, stdout compared
  in the trainer (:func:`.code_programs.output_matches`), exit status 0 required.

A row with none of these scores None (not applicable); a completion without code scores 0.0
without running. The program is extracted as described in :mod:`.code_programs`. Every
run goes through :mod:`eggroll_rl.sandbox` (read its docstring for what that does and does not
defend against), in parallel on its bounded pool. Identical (program, tests) pairs of a batch, which
an ES population produces a lot of, run once, and finished results are cached.

The per-program wall-clock limit is ``EGGROLL_CODE_TIMEOUT`` seconds (default 5).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

from ..sandbox import Limits, Sandbox, TestCase, default_sandbox
from .code_programs import assert_tests, build_program, humaneval_tests, output_matches

from .registry import register

_CACHE_SIZE = 8192
_cache: OrderedDict[tuple, tuple[bool, ...]] = OrderedDict()
_cache_lock = threading.Lock()


def default_limits() -> Limits:
    return Limits(timeout_s=float(os.environ.get("EGGROLL_CODE_TIMEOUT", "5")))


def _cell(columns: dict[str, Any], name: str, i: int) -> Any:
    col = columns.get(name)
    if not isinstance(col, (list, tuple)) or i >= len(col):
        return None
    value = col[i]
    if isinstance(value, float) and value != value:  # NaN from a pandas-backed column
        return None
    return value


def _as_list(value: Any) -> list | None:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


@lru_cache(maxsize=1024)
def _humaneval(prompt: str, test: str, entry_point: str) -> tuple[str, tuple[TestCase, ...]]:
    setup, steps = humaneval_tests(prompt, test, entry_point)
    return setup, tuple(steps)


@lru_cache(maxsize=1024)
def _asserts(test: str) -> tuple[str, tuple[TestCase, ...]]:
    setup, steps = assert_tests(test)
    return setup, tuple(steps)


def _job(completion: Any, columns: dict[str, Any], i: int) -> tuple | float | None:
    """("tests", program, steps, setup, entry) | ("stdio", program, inputs, outputs) | 0.0 | None."""
    prompt, test, entry = (_cell(columns, k, i) for k in ("prompt", "test", "entry_point"))
    test_list = _as_list(_cell(columns, "test_list", i))
    inputs, outputs = _as_list(_cell(columns, "inputs", i)), _as_list(_cell(columns, "outputs", i))
    if isinstance(test, str) and test.strip() and isinstance(entry, str) and entry:
        prompt = prompt if isinstance(prompt, str) else ""
        setup, steps = _humaneval(prompt, test, entry)
        program = build_program(completion, prompt, entry)
        return ("tests", program, steps, setup, entry) if program else 0.0
    if test_list:
        setup = _cell(columns, "test_setup_code", i)
        steps = tuple(TestCase(t) for t in test_list)
        program = build_program(completion)
        return ("tests", program, steps, setup if isinstance(setup, str) else "", None) if program else 0.0
    if isinstance(test, str) and test.strip():
        setup, steps = _asserts(test)
        program = build_program(completion)
        return ("tests", program, steps, setup, None) if program else 0.0
    if inputs is not None and outputs is not None and len(inputs) == len(outputs) and inputs:
        program = build_program(completion)
        return ("stdio", program, tuple(inputs), tuple(outputs)) if program else 0.0
    return None


def _run(sandbox: Sandbox, limits: Limits, job: tuple) -> tuple[bool, ...]:
    """Per-test pass/fail of one job (cached when the run finished on its own)."""
    key = (job, limits)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if job[0] == "tests":
        _, program, steps, setup, entry = job
        res = sandbox.run_tests(program, list(steps), setup=setup, entry_point=entry, limits=limits)
        outcome = tuple(res.tests or [False] * sum(s.counted for s in steps))
        cacheable = res.status == "ok"
    else:
        _, program, stdin, expected = job
        res = sandbox.run_program(program, stdin=stdin, limits=limits)
        outcome = (res.status == "ok" and res.returncode == 0 and output_matches(res.stdout, expected),)
        cacheable = res.status in ("ok", "output_limit")
    if cacheable:
        with _cache_lock:
            _cache[key] = outcome
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return outcome


def score_code(
    completions: list[Any],
    columns: dict[str, Any],
    *,
    all_pass: bool = False,
    sandbox: Sandbox | None = None,
    limits: Limits | None = None,
) -> list[float | None]:
    """Pass fraction (or all-pass 0/1) of each completion; None where the row has no tests."""
    sandbox = sandbox or default_sandbox()
    limits = limits or default_limits()
    jobs = [_job(c, columns, i) for i, c in enumerate(completions)]
    runs: list[tuple] = []  # unique runs: a tests job, or one stdio case
    index: dict[tuple, int] = {}
    for job in jobs:
        if isinstance(job, tuple):
            units = [job] if job[0] == "tests" else [("stdio", job[1], i, o) for i, o in zip(job[2], job[3])]
            for unit in units:
                index.setdefault(unit, len(runs))
                if index[unit] == len(runs):
                    runs.append(unit)
    outcomes = sandbox.map(lambda unit: _run(sandbox, limits, unit), [(u,) for u in runs])
    scores: list[float | None] = []
    for job in jobs:
        if not isinstance(job, tuple):
            scores.append(job)
            continue
        if job[0] == "tests":
            passed = list(outcomes[index[job]])
        else:
            passed = [outcomes[index[("stdio", job[1], i, o)]][0] for i, o in zip(job[2], job[3])]
        if not passed:
            scores.append(0.0)
        elif all_pass:
            scores.append(1.0 if all(passed) else 0.0)
        else:
            scores.append(sum(passed) / len(passed))
    return scores


@register("code_tests")
def code_tests(completions: list[Any], **columns: Any) -> list[float | None]:
    """Fraction of the row's tests that the completion's program passes (see module docstring)."""
    return score_code(completions, columns)


@register("code_tests_all_pass")
def code_tests_all_pass(completions: list[Any], **columns: Any) -> list[float | None]:
    """1.0 if the completion's program passes every test of its row, else 0.0."""
    return score_code(completions, columns, all_pass=True)
