"""The EGGROLL-vs-GRPO benchmark end to end, tiny: both methods train, are scored at the marks
by the same eval path, and the summary, table and plot are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_vs_grpo_tiny(tmp_path):
    pytest.importorskip("trl")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_grpo.py"), str(ROOT / "recipes" / "tiny.yaml"),
                          "--minutes", "0.2", "--marks", "0.1,0.2", "--grpo-lr", "1e-5", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"eggroll", "grpo (lr 1e-05)"}
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["engine_dtype"] in ("float32", "bfloat16")
    for method in summary["methods"].values():
        assert [m["minutes"] for m in method["marks"]] == [0, 0.1, 0.2]
        assert method["marks"][-1]["step"] >= 1 and method["peak_rss_gb"] > 0.2 and method["s_per_step"] > 0
        assert all(0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1 for m in method["marks"])
    assert (tmp_path / "vs_grpo.png").read_bytes().startswith(b"\x89PNG")
    assert "grpo (lr 1e-05)" in out.stdout and "peak GB" in out.stdout and summary["machine"]["cpu"] in out.stdout
