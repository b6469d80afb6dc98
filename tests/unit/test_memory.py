"""Memory of the process tree: children count, the peak is kept; freed heap goes back to the OS."""

from __future__ import annotations

import platform
import subprocess
import sys
import time

import pytest

from eggroll_rl.memory import TreeMemory, release_free_heap, tree_rss_bytes

HOLD = "import sys, time; x = bytearray(300 << 20); sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"


def test_a_child_process_counts_in_the_tree_and_in_the_peak():
    alone = tree_rss_bytes()
    with TreeMemory(interval=0.05) as memory:
        child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n"
            time.sleep(0.2)
            with_child = tree_rss_bytes()
            assert with_child - alone > 250 << 20
        finally:
            child.kill()
            child.wait()
        time.sleep(0.2)
        assert memory.peak >= with_child - (20 << 20)  # sampled while the child lived
        assert memory.metrics()["memory/rss_gb"] < memory.metrics()["memory/peak_rss_gb"]


FRAGMENT = """
import sys
from eggroll_rl.memory import release_free_heap, tree_rss_bytes
chunks = [bytearray(64 << 10) for _ in range(3000)]  # ~190 MB of heap chunks (below mmap size)
del chunks[:-1]  # the last one pins the heap's top: glibc cannot shrink it by itself
kept = tree_rss_bytes()
assert release_free_heap()
print(kept - tree_rss_bytes())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc_trim")
def test_freed_heap_pages_go_back_to_the_os():
    # In a fresh process: this one's heap holds whatever earlier tests left behind.
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 150 << 20
