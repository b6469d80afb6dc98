"""The local executor: a bounded pool of sandbox slots (one uid each when running as root), and
the process-wide default pool behind the module-level helpers."""

from __future__ import annotations

import ast
import atexit
import builtins
import os
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api import Isolation, Limits, SandboxResult, TestCase
from .launcher import launch
from .probe import probe


class Sandbox:
    """A bounded pool of sandboxed runs (a :class:`~eggroll_rl.sandbox.api.CodeExecutor`).
    Thread-safe; one per process is enough."""

    def __init__(
        self,
        limits: Limits | None = None,
        workers: int | None = None,
        namespaces: bool | None = None,
        drop_privileges: bool = True,
        hide: Sequence[str] = (),
        uid_base: int | None = None,
    ):
        self.limits = limits or Limits()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._want_ns = namespaces
        self._drop = drop_privileges
        self._extra_hide = [str(h) for h in hide]
        self._uid_base = uid_base
        self._iso: Isolation | None = None
        self._lock = threading.Lock()
        self._slots: queue.Queue[int | None] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._uid_locks: list[int] = []

    @property
    def isolation(self) -> Isolation:
        """What this machine gives the runs; probed on first use (claiming the slots' uids)."""
        with self._lock:
            if self._iso is None:
                self._iso, self._uid_locks = probe(
                    self.workers, self._want_ns, self._drop, self._extra_hide, self._uid_base
                )
                slots = self._iso.uids or (None,) * self.workers
                for slot in slots:
                    self._slots.put(slot)
        return self._iso

    # -- one run -------------------------------------------------------------------------

    def run_program(self, program: str, stdin: str | bytes = "", limits: Limits | None = None) -> SandboxResult:
        """Run `program` as __main__ with `stdin`; the result carries its (capped) output."""
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        return self._run("stdio", {"program": program, "stdin": data}, None, limits or self.limits)

    def run_tests(
        self,
        program: str,
        tests: Sequence[str | TestCase],
        setup: str = "",
        entry_point: str | None = None,
        limits: Limits | None = None,
    ) -> SandboxResult:
        """Load `program` in the candidate process, then run `setup` and each test in the test
        process. Test code calls the candidate's functions by name, and `candidate` is the
        function `entry_point`. `result.tests` has one bool per counted test."""
        cases = [t if isinstance(t, TestCase) else TestCase(t) for t in tests]
        spec = {
            "nonce": secrets.token_hex(16),
            "setup": setup,
            "cases": [(c.source, c.counted) for c in cases],
            "names": referenced_names([setup, *(c.source for c in cases)]),
            "entry_point": entry_point or "",
        }
        return self._run("tests", {"program": program}, spec, limits or self.limits)

    def _run(self, mode: str, job: dict, spec: dict | None, limits: Limits) -> SandboxResult:
        iso = self.isolation
        uid = self._slots.get()
        try:
            return launch(iso, mode, job, spec, limits, uid)
        finally:
            self._slots.put(uid)

    # -- many runs -----------------------------------------------------------------------

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        """``[fn(*job) for job in jobs]`` on the bounded pool, in order."""
        if not jobs:
            return []
        _ = self.isolation  # probe once, before the threads race for it
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(lambda job: fn(*job), jobs))

    def close(self) -> None:
        """Wait for running jobs, stop the pool and give the uids back (a later use re-probes)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for fd in self._uid_locks:
                os.close(fd)
            self._uid_locks = []
            self._iso = None
            self._slots = queue.Queue()


def referenced_names(sources: Sequence[str]) -> list[str]:
    """Names the test code reads that could be the candidate's functions (not builtins)."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names.update(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
    return sorted(names - set(dir(builtins)) - {"candidate"})


# ----------------------------------------------------------------------------------------
# The process-wide default

_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The shared pool (min(4, cpus) workers), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def isolation() -> Isolation:
    """What the default sandbox gets on this machine (probes once)."""
    return default_sandbox().isolation


def run_program(program: str, stdin: str | bytes = "", limits: Limits | None = None) -> SandboxResult:
    return default_sandbox().run_program(program, stdin, limits)


def run_tests(program: str, tests: Sequence[str | TestCase], setup: str = "",
              entry_point: str | None = None, limits: Limits | None = None) -> SandboxResult:
    return default_sandbox().run_tests(program, tests, setup, entry_point, limits)
