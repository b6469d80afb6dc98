"""`eggroll-rl report`: figures and a self-contained report.html, for one run and overlaid runs."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from eggroll_rl.cli import app

from support import TINY

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    for name, lr in (("a", "0.5"), ("b", "0.1")):
        result = runner.invoke(app, ["train", TINY, f"es.lr={lr}", f"run_name={name}", f"output_dir={tmp}"])
        assert result.exit_code == 0, result.output
    return tmp


@pytest.mark.slow
def test_training_writes_a_self_contained_report(two_runs):
    page = (two_runs / "a" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG) for i in images)
    for figure in ("reward.png", "training.png", "time.png", "throughput.png"):
        assert (two_runs / "a" / figure).read_bytes().startswith(PNG)
    assert "<td>a</td><td>3</td>" in page  # steps
    assert "at step 0" in page and "at step 3" in page  # first and last eval


@pytest.mark.slow
def test_report_overlays_runs_and_names_what_differs(two_runs, tmp_path):
    result = runner.invoke(app, ["report", str(two_runs / "a"), str(two_runs / "b"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "<td>a</td>" in page and "<td>b</td>" in page
    assert "es.lr=0.5" in page and "es.lr=0.1" in page and "es.sigma" not in page


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


@pytest.mark.slow
def test_the_report_shows_the_recipe_the_samples_and_the_updates_health(two_runs, tmp_path):
    page = (two_runs / "a" / "report.html").read_text()
    for words in ("a: recipe", "tiny-random", "1×math_accuracy + 1×digit_fraction", "8 members (mirrored pairs) × 2 prompts",
                  "ran on</th><td>torch on cpu, float32", "a: completions of step 3", "<th>reward</th>"):
        assert words in page, words
    assert re.search(r"<td>\d+\.\d s</td>", page) and "<th>training time</th>" in page  # seconds, not "0.0" minutes
    result = runner.invoke(app, ["report", str(two_runs / "a"), str(two_runs / "b"), "--out", str(tmp_path / "cmp")])
    cmp = (tmp_path / "cmp" / "report.html").read_text()
    assert result.exit_code == 0 and "report_to" not in cmp.split("<th>settings that differ</th>")[1].split("</table>")[0]


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(two_runs, tmp_path):
    """The page loads in a real browser: its DOM has every figure and table; a screenshot is kept."""
    if BROWSER is None:
        pytest.skip("needs chromium (scripts/test.sh installs Debian's)")
    page = two_runs / "a" / "report.html"
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 4 and "completions of step 3" in dom and "a: recipe" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,3000", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 50_000  # a rendered page, not a blank one
    print(f"report screenshot: {shot}")
