"""Sandbox throughput: trivial programs per second through the bounded pool, on this machine.

    python bench/sandbox_throughput.py [--programs 200] [--workers N] [--mode tests|stdio|both]

"tests" runs a one-function program against two asserts (the candidate process, the test
process and the RPC between them: what every HumanEval/MBPP reward pays); "stdio" runs a
program that reads stdin and prints. Every run is a full sandbox: namespaces, rlimits, uid
switch, tmpfs mounts, and teardown. Prints the isolation this machine gives, then one line per
mode with programs/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eggroll_rl.sandbox import Sandbox  # noqa: E402

PROGRAM = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def bench(sandbox: Sandbox, mode: str, n: int) -> float:
    if mode == "tests":
        jobs = [(PROGRAM + f"# {i}\n", TESTS) for i in range(n)]
        fn = sandbox.run_tests
        ok = lambda r: r.all_passed  # noqa: E731
    else:
        jobs = [(f"print(sum(map(int, input().split())) + {i})", "1 2\n") for i in range(n)]
        fn = sandbox.run_program
        ok = lambda r: r.status == "ok" and r.returncode == 0  # noqa: E731
    sandbox.map(fn, jobs[: sandbox.workers])  # warm up
    start = time.perf_counter()
    results = sandbox.map(fn, jobs)
    elapsed = time.perf_counter() - start
    failed = sum(not ok(r) for r in results)
    if failed:
        raise SystemExit(f"{failed} of {n} trivial {mode} programs failed: {results[0]}")
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None, help="default: min(4, cpus)")
    ap.add_argument("--mode", choices=["tests", "stdio", "both"], default="both")
    args = ap.parse_args()
    sandbox = Sandbox(workers=args.workers)
    print(f"cpus: {os.cpu_count()}, workers: {sandbox.workers}, {sandbox.isolation.describe()}")
    for mode in (["tests", "stdio"] if args.mode == "both" else [args.mode]):
        rate = bench(sandbox, mode, args.programs)
        print(f"{mode}: {rate:.1f} programs/s ({1000 * sandbox.workers / rate:.0f} ms per program per worker)")
    sandbox.close()


if __name__ == "__main__":
    main()
