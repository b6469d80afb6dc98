"""Memory of the whole process tree: the trainer, engine processes, reward and sandbox workers.

Peak RSS of one process misses the engine's own processes (vLLM on GPU) and the grading
workers, so a :class:`TreeMemory` sampler sums the resident set of the process and all its
descendants (Linux /proc) a few times a second and keeps the peak. Shared pages count once per
process that maps them, so the sum is an upper bound of the machine's memory use.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import threading
from pathlib import Path

import torch

GB = 1e9


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task or process ended meanwhile
            continue
    return kids


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident bytes of process `pid` (default: this one) and all its descendants now."""
    total, todo, seen = 0, [pid or os.getpid()], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_bytes(p)
        todo += _children(p)
    return total


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_heap() -> bool:
    """Give the pages that the C heap has freed, but keeps, back to the OS (glibc malloc_trim);
    False where there is no such call.

    A generation step allocates and frees many buffers of many sizes (batches of different
    lengths, sampler and scheduler state); glibc keeps the freed pages for reuse, fragmented, and
    the resident set creeps up step after step, until a long run meets the OOM killer
    (docs/benchmarks.md: the growth per step with and without the trim).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class TreeMemory:
    """Samples the RSS of the process tree of `pid` (default: this process) every `interval`
    seconds in a daemon thread; keeps the peak."""

    def __init__(self, interval: float = 0.25, pid: int | None = None) -> None:
        self.pid = pid
        self.peak = self._own_peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="eggroll-memory")

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def _own_peak(self) -> int:
        """This process's high-water mark, when it is the one watched: a spike between samples
        is not lost."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if self.pid is None else 0

    def sample(self) -> int:
        now = tree_rss_bytes(self.pid)
        self.peak = max(self.peak, now, self._own_peak())
        return now

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def metrics(self) -> dict[str, float]:
        """memory/rss_gb (the tree now) and memory/peak_rss_gb (since start), plus the GPU's peak
        allocated memory where there is one."""
        out = {"memory/rss_gb": self.sample() / GB, "memory/peak_rss_gb": self.peak / GB}
        if torch.cuda.is_available():
            out["memory/gpu_peak_gb"] = torch.cuda.max_memory_allocated() / GB
        return out
