"""Memory of the process tree: children count, the peak is kept."""

from __future__ import annotations

import subprocess
import sys
import time

from eggroll_rl.memory import TreeMemory, tree_rss_bytes

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
