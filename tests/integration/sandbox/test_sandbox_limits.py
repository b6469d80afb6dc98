"""Runaway programs against the sandbox's limits: loops and stopped programs hit the timeout, fork
and memory bombs the process and memory caps, floods the output cap, and disk fills the file-size
limit and the tmpfs sizes. Each must be contained (see support.sandbox.contained), in both modes
where it makes sense."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import threading
import time

import pytest

from support.sandbox import GOOD, LIMITS, TESTS, TIMEOUT, contained, needs_ns
from support.sandbox import IS_ROOT as ROOT
from support.sandbox import leftover_pids as _leftovers


def test_infinite_loop(box, canary):
    res = contained(box, GOOD + "while True:\n    pass\n", canary=canary)
    assert res.status == "timeout"


def test_infinite_loop_inside_the_tested_function(box):
    res = contained(box, "def add(a, b):\n    while True:\n        pass\n")
    assert res.status == "timeout"


def test_busy_loop_in_threads(box, canary):
    program = GOOD + textwrap.dedent("""
        import threading
        def spin():
            while True:
                pass
        for _ in range(64):
            try:
                threading.Thread(target=spin, daemon=True).start()
            except RuntimeError:
                break
        while True:
            pass
    """)
    res = contained(box, program, canary=canary)
    assert res.status == "timeout" or res.load_error  # fallback may lack `threading` (see _PREIMPORT)


def test_fork_bomb(box, canary, bystander):
    program = GOOD + textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    peak, stop = [0], threading.Event()

    def watch():  # the number of processes the bomb reaches, sampled from outside
        while not stop.is_set():
            peak[0] = max(peak[0], len(_leftovers(box)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        contained(box, program, canary=canary)
    finally:
        stop.set()
        watcher.join()
    if ROOT:
        assert 2 <= peak[0] <= LIMITS.nproc
    assert bystander.poll() is None
    # The slot's uid is not poisoned: every slot runs a correct program right after.
    after = box.map(box.run_tests, [(GOOD, TESTS)] * (2 * box.workers))
    assert all(r.all_passed for r in after)


def test_fork_bomb_that_escapes_its_process_group(box):
    program = GOOD + textwrap.dedent("""
        import os, time
        for _ in range(4):
            try:
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        while True:
                            time.sleep(1)
                    os._exit(0)
            except OSError:
                pass
        while True:
            pass
    """)
    contained(box, program)  # asserts that no process of the sandbox uid survived


@pytest.mark.skipif(not ROOT, reason="per-slot uids need root")
def test_concurrent_fork_bombs_do_not_starve_other_slots(box):
    bomb = GOOD + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    results = box.map(box.run_tests, [(bomb, TESTS), (GOOD, TESTS)] * 2)
    assert [r.all_passed for r in results] == [False, True, False, True]


def test_memory_bomb_at_once(box, canary):
    res = contained(box, GOOD + "hog = bytearray(64 * 1024**3)\n", canary=canary)
    assert res.load_error and "MemoryError" in res.stderr


def test_memory_bomb_gradual(box):
    program = GOOD + "hog = []\nwhile True:\n    hog.append(bytearray(10 * 1024**2))\n"
    res = contained(box, program)
    assert res.load_error or res.status == "timeout"


def test_memory_bomb_in_forked_children(box):
    program = GOOD + textwrap.dedent("""
        import os
        for _ in range(16):
            try:
                os.fork()
            except OSError:
                pass
        hog = []
        while True:
            hog.append(bytearray(10 * 1024**2))
    """)
    contained(box, program)


def test_ten_gigabytes_to_stdout(box, canary):
    program = GOOD + "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)\n"
    start = time.monotonic()
    res = contained(box, program, canary=canary)
    assert res.status == "output_limit"
    assert len(res.stdout) <= LIMITS.output_bytes
    assert time.monotonic() - start < 2.0  # killed at the cap, long before 10 GB


def test_flood_to_stderr(box):
    program = GOOD + "import os\nwhile True:\n    os.write(2, b'e' * 65536)\n"
    res = contained(box, program)
    assert res.status == "output_limit" and len(res.stderr) <= LIMITS.output_bytes


def test_stdio_flood_and_loop(box):
    flood = box.run_program("while True:\n    print('y' * 4096)\n")
    assert flood.status == "output_limit" and len(flood.stdout) <= LIMITS.output_bytes
    loop = box.run_program("while True:\n    pass\n")
    assert loop.status == "timeout" and loop.wall_s < TIMEOUT + 2


def test_stopped_program(box):
    program = GOOD + "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"
    res = contained(box, program)
    assert res.status == "timeout"


@needs_ns
def test_disk_fill(ns_box, canary):
    before = shutil.disk_usage(tempfile.gettempdir()).used
    program = GOOD + textwrap.dedent("""
        import os
        for where in (".", "/tmp", "/var/tmp", "/dev/shm"):
            i = 0
            try:
                while True:
                    with open(os.path.join(where, f"fill{i}"), "wb") as f:
                        f.write(b"x" * (1 << 20))
                    i += 1
            except OSError as exc:
                print(where, i, exc)
        raise SystemExit("disk full")
    """)
    res = contained(ns_box, program, canary=canary)
    assert "No space left on device" in res.stdout
    # Each place held at most its tmpfs size, and none of it reached the host's disk.
    written = {line.split()[0]: int(line.split()[1]) for line in res.stdout.splitlines()}
    assert written["."] <= LIMITS.disk_mb and all(written[p] <= LIMITS.scratch_mb for p in ("/tmp", "/var/tmp"))
    assert shutil.disk_usage(tempfile.gettempdir()).used - before < 32 * 1024**2


def test_one_huge_file(box):
    program = GOOD + "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n"
    res = contained(box, program)
    assert res.load_error and "File too large" in res.stderr  # RLIMIT_FSIZE, before any tmpfs fills
