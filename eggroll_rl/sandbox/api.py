"""The sandbox's vocabulary: limits, test steps, results, what a machine isolates, errors, and
the executor interface the rewards program against."""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (not: the program failed)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. Every process of the run gets the rlimits."""

    timeout_s: float = 5.0  # wall clock, from spawn to the last test
    memory_mb: int = 1024  # address space per process
    cpu_s: int | None = None  # CPU seconds per process; None: ceil(timeout_s) + 1
    nproc: int = 8  # processes + threads of the run (per sandbox uid / user namespace)
    file_size_mb: int = 16  # largest file a program may write
    disk_mb: int = 64  # the working directory's tmpfs (namespace mode)
    scratch_mb: int = 8  # each of /tmp, /var/tmp, /dev/shm, /run (namespace mode)
    open_files: int = 64
    output_bytes: int = 1 << 20  # per stream (stdout, stderr); more kills the run
    nice: int = 10

    def rlimits(self) -> dict[str, tuple[int, int]]:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1
        mib = 1 << 20
        wanted = {
            "RLIMIT_AS": (self.memory_mb * mib, self.memory_mb * mib),
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_NPROC": (self.nproc, self.nproc),
            "RLIMIT_FSIZE": (self.file_size_mb * mib, self.file_size_mb * mib),
            "RLIMIT_NOFILE": (self.open_files, self.open_files),
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_MSGQUEUE": (0, 0),
        }
        return {k: v for k, v in wanted.items() if hasattr(resource, k)}


@dataclass
class SandboxResult:
    """What one run did. `tests` holds one bool per counted test (tests mode)."""

    status: str  # "ok" | "timeout" | "output_limit" | "error"
    returncode: int | None
    wall_s: float
    stdout: str = ""
    stderr: str = ""
    tests: list[bool] | None = None
    finished: bool = False  # the test process reported that every test ran
    load_error: bool = False  # the program failed (raised, exited) before any test ran

    @property
    def passed(self) -> int:
        return sum(self.tests or [])

    @property
    def total(self) -> int:
        return len(self.tests or [])

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class TestCase:
    """One step of a test script. Counted steps are the tests; an uncounted step that fails
    (setup inside a HumanEval ``check``) fails every counted step after it."""

    __test__ = False  # not a pytest class

    source: str
    counted: bool = True


@dataclass
class Isolation:
    """What this machine gives the sandbox (see :func:`eggroll_rl.sandbox.isolation`)."""

    python: str
    namespaces: bool  # network + pid + mount namespaces
    user_namespace: bool  # unprivileged path: namespaces inside a user namespace
    uids: tuple[int, ...]  # per-slot uids (root), else ()
    hide: tuple[str, ...]
    keep: tuple[str, ...]
    preimport: tuple[str, ...]
    prefix: tuple[str, ...]  # command prefix (setpriv, unshare)
    missing: tuple[str, ...] = ()  # protections this machine lacks

    def describe(self) -> str:
        parts = [
            "namespaces: net+pid+mount" + (" (in a user namespace)" if self.user_namespace else "")
            if self.namespaces
            else "namespaces: none",
            f"uids: {self.uids[0]}..{self.uids[-1]}" if self.uids else "uid: unchanged",
        ]
        if self.missing:
            parts.append("missing: " + "; ".join(self.missing))
        return ", ".join(parts)


class CodeExecutor(Protocol):
    """Where model-written code runs: what the code rewards call, so that they do not care how.

    :class:`~eggroll_rl.sandbox.Sandbox` (local processes, see the package docstring) is the
    default. Another executor, such as a remote sandbox service (E2B, Morph, ... as in open-r1's
    ``utils/code_providers.py``), would implement the same methods with the same semantics:
    results as :class:`SandboxResult` (a pass proven by trusted test code, one bool per counted
    test), ``limits`` honoured or refused, never a program's failure raised as an exception
    (only :class:`SandboxError` when the executor itself cannot run).
    """

    @property
    def isolation(self) -> Isolation:
        """What containment the runs get (probed or described once)."""

    def run_program(self, program: str, stdin: str | bytes = "", limits: Limits | None = None) -> SandboxResult:
        """Run `program` as __main__ with `stdin`; the result carries its (capped) output."""

    def run_tests(self, program: str, tests: Sequence[str | TestCase], setup: str = "",
                  entry_point: str | None = None, limits: Limits | None = None) -> SandboxResult:
        """Run `setup` and `tests` against the functions `program` defines (`candidate` is the
        function `entry_point`); `result.tests` has one bool per counted test."""

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        """``[fn(*job) for job in jobs]``, as many at a time as the executor runs, in order."""

    def close(self) -> None:
        """Wait for running jobs and release what the executor holds."""
