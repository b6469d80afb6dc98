"""bench/step_rollout.py end to end, tiny: each variant in its own process, a line per variant."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_step_rollout_variants_side_by_side():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "step_rollout.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--variant", "", "--variant", "es.population=2|generation.max_new_tokens=2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2].split()[-1] == "(recipe)" and lines[-2].split()[-4] == "1.00"  # ratio, peak GB, each rollout
    assert lines[-1].endswith("es.population=2|generation.max_new_tokens=2")
    assert float(lines[-1].split()[-4]) > 0
    assert all(0.2 < float(line.split()[-3]) < 50 for line in lines[-2:])  # the process tree's peak, engine included


def test_reload_times_each_rollout_after_a_push():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "step_rollout.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--repeats", "2", "--reload"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "weights reloaded after each" in lines[-3]
    each = [float(s) for s in lines[-1].split()[-2].split(",")]
    assert len(each) == 2 and all(s > 0 for s in each)
    assert abs(sum(each) / 2 - float(lines[-1].split()[-5])) <= 0.1  # the mean column is theirs (both rounded)


def test_a_failing_variant_is_named():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "step_rollout.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--variant", "es.population=3", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "variant 'es.population=3' failed" in out.stderr
