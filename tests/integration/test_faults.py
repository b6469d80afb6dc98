"""Nothing lost, nothing silently wrong: kills at any point, torn logs, non-finite rewards, bad
targets and bad input, each with the run left resumable or a one-line error."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from eggroll_rl.cli import app
from eggroll_rl.config import ConfigError
from eggroll_rl.es import EggrollES, NonFiniteUpdateError
from eggroll_rl.prepare import model_targets
from eggroll_rl.rewards import combine_rewards

from support import ROOT, TINY

runner = CliRunner()
# Measurements of the machine, not of the run: they differ between any two runs.
MEASURED_KEYS = ("time/", "tokens_per_s", "memory/")


def strict_jsonl(path: Path) -> list[dict]:
    """Every line parses, the file ends with a newline: a complete log."""
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"{path} has a torn tail"
    return [json.loads(line) for line in text.splitlines()]


def without_measurements(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(MEASURED_KEYS)} for r in records]


def assert_same_run(reference: Path, run: Path, steps: int) -> None:
    """Same weights, fp32 master and optimizer state; complete logs with the same content."""
    for name in ("model.safetensors", "trainer/master.safetensors", "trainer/optimizer.safetensors"):
        a = load_file(str(reference / "checkpoints" / f"step_{steps:06d}" / name))
        b = load_file(str(run / "checkpoints" / f"step_{steps:06d}" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for log in ("metrics.jsonl", "samples.jsonl", "fitness.jsonl", "eval.jsonl"):
        ref, got = strict_jsonl(reference / log), strict_jsonl(run / log)
        if log == "eval.jsonl":  # an eval's tokens/s is timing; everything graded is the same
            ref, got = ([{k: v for k, v in r.items() if k != "tokens_per_s"} for r in x] for x in (ref, got))
        assert without_measurements(got) == without_measurements(ref), log


# -- resume keeps every record; a torn last line does not block it ---------------------------


@pytest.mark.slow
def test_interrupted_run_resumes_bitwise_with_every_record_and_a_torn_log_repaired(tmp_path, monkeypatch):
    from eggroll_rl import learner as learner_module

    common = ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "es.optimizer=adam", "es.lr=0.01",
              f"output_dir={tmp_path}"]
    assert runner.invoke(app, ["train", TINY, *common, "run_name=full"]).exit_code == 0
    real_save = learner_module.save_checkpoint

    def save_then_die(dest, *args, **kwargs):
        path = real_save(dest, *args, **kwargs)
        if dest.name == "step_000002":
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(learner_module, "save_checkpoint", save_then_die)
    interrupted = runner.invoke(app, ["train", TINY, *common, "run_name=cut"])
    assert interrupted.exit_code == 130 and "--resume" in interrupted.output
    monkeypatch.setattr(learner_module, "save_checkpoint", real_save)
    assert list((tmp_path / "cut" / "checkpoints").iterdir()) == [tmp_path / "cut" / "checkpoints" / "step_000002"]
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward_mean": 0.12')  # then died in the middle of step 3's append
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(tmp_path / "full", tmp_path / "cut", 4)


# -- kills at random points -------------------------------------------------------------------

DRIVER = r"""
import os, signal, sys, threading
how, n = sys.argv[1], float(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
calls = {"n": 0}
if how == "append":  # die in the middle of the n-th log append, half the line written
    from eggroll_rl import run_dir
    real = run_dir.append_line
    def append_line(path, line, durable=False):
        calls["n"] += 1
        if calls["n"] == n:
            with open(path, "a") as f:
                f.write(line[: len(line) // 2]); f.flush()
            die()
        real(path, line, durable)
    run_dir.append_line = append_line
elif how == "tensors":  # die in the middle of the n-th safetensors write (checkpoints)
    from eggroll_rl import params
    real = params.save_tensors
    def save_tensors(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == n:
            open(path, "wb").write(b"half a file"); die()
        real(tensors, path, metadata)
    params.save_tensors = save_tensors
elif how == "time":
    threading.Timer(n, die).start()
from eggroll_rl.cli import app
app(sys.argv[3:])
"""


def _cli(args: list[str], kill: tuple[str, float] = ("none", 0)) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", DRIVER, kill[0], str(kill[1]), *args], env=env,
                          capture_output=True, text=True, timeout=300).returncode


@pytest.mark.slow
def test_runs_killed_anywhere_resume_to_identical_weights_and_complete_logs(tmp_path):
    steps = 5
    common = ["train", TINY, f"train.steps={steps}", "train.eval_every=2", "train.checkpoint_every=1",
              "train.keep_checkpoints=2", "es.optimizer=adam", "es.lr=0.01", f"output_dir={tmp_path}"]
    assert _cli([*common, "run_name=reference"]) == 0
    rng = random.Random(0)
    kills = [("append", 3), ("append", 9), ("append", 17), ("tensors", 2), ("tensors", 7),
             ("time", rng.uniform(3.0, 6.0)), ("time", rng.uniform(3.0, 6.0))]
    for i, kill in enumerate(kills):
        run = tmp_path / f"killed{i}"
        code = _cli([*common, f"run_name=killed{i}"], kill)
        resumes = 0
        while code != 0:
            assert code == -signal.SIGKILL, f"{kill}: exit {code}"
            if not (run / "config.yaml").is_file():  # died before the run began: start it again
                code = _cli([*common, f"run_name=killed{i}"])
            else:
                code = _cli(["train", "--resume", str(run)], kill if rng.random() < 0.5 else ("none", 0))
            resumes += 1
            assert resumes < 10, kill
        assert_same_run(tmp_path / "reference", run, steps)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004", "step_000005"], kill


# -- non-finite values never reach the weights ------------------------------------------------


def test_infinite_reward_values_count_as_missing_with_a_warning(caplog):
    def shaky(completions, **kwargs):
        return [float("inf"), float("-inf"), float("nan"), None, 1.0][: len(completions)]

    totals, raw = combine_rewards([(shaky, 1.0)])(["a", "b", "c", "d", "e"])
    assert totals == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert raw["shaky"] == [None, None, None, None, 1.0]
    assert "returned ±inf for 2 of 5" in caplog.text


def test_non_finite_fitness_is_refused_before_any_weight_changes():
    from eggroll_rl.config import ESConfig

    es = EggrollES(ESConfig(population=4), seed=0, total_steps=3)
    master = {"w": torch.ones(3, 2)}
    with pytest.raises(NonFiniteUpdateError, match="1 of 4 fitness values are not finite"):
        es.tell(0, torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=torch.float64), master)
    assert torch.equal(master["w"], torch.ones(3, 2)) and es.updates_applied == 0


def inf_reward(completions, **kwargs):
    """A buggy reward: +inf for the first completion of every call, else the digit fraction."""
    from eggroll_rl.rewards import digit_fraction

    return [math.inf] + digit_fraction(completions[1:])


@pytest.mark.slow
def test_a_reward_returning_inf_trains_on_and_logs_the_missing_fraction(tmp_path):
    result = runner.invoke(app, ["train", TINY, "rewards=[test_faults:inf_reward]", "train.eval_every=0",
                                 f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    metrics = strict_jsonl(tmp_path / "tiny" / "metrics.jsonl")
    assert all(0 < m["rewards/test_faults:inf_reward/missing"] < 1 for m in metrics)
    assert all(math.isfinite(m["update_norm"]) for m in metrics)
    weights = load_file(str(tmp_path / "tiny" / "checkpoints" / "step_000003" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


@pytest.mark.slow
def test_non_finite_fitness_stops_the_run_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    real_shape = EggrollES.shape

    def shape(self, rewards):
        fitness = real_shape(self, rewards)
        return fitness * float("nan") if self.updates_applied == 2 else fitness

    monkeypatch.setattr(EggrollES, "shape", shape)
    result = runner.invoke(app, ["train", TINY, "train.checkpoint_every=1", "train.eval_every=0", f"output_dir={tmp_path}"])
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert "NonFiniteUpdateError: step 2: 8 of 8 fitness values are not finite" in line and "--resume" in line
    run = tmp_path / "tiny"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    weights = load_file(str(run / "checkpoints" / "step_000002" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert len(strict_jsonl(run / "fitness.jsonl")) == 2


# -- targets the perturbation is not right for -------------------------------------------------


def test_targets_that_are_not_linear_weights_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        model_targets(tiny_model_dir, [r".*embed_tokens\.weight", r".*q_proj\.weight"])
    assert "model.embed_tokens.weight (1 of 3 selected): not the weight of an nn.Linear layer" in str(err.value)

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=64)).save_pretrained(gpt2)
    with pytest.raises(ConfigError, match=r"transformer\.h\.0\.attn\.c_attn\.weight .*not the weight of an nn\.Linear"):
        model_targets(gpt2, [r".*c_attn\.weight"])  # a Conv1D: stored in × out


def test_embedding_target_fails_before_the_run_starts(tmp_path):
    result = runner.invoke(app, ["train", TINY, "es.targets=['.*embed_tokens\\.weight']", f"output_dir={tmp_path}"])
    assert result.exit_code == 2 and "not the weight of an nn.Linear layer" in result.output
    assert not (tmp_path / "tiny").exists()


# -- one line, not a traceback -----------------------------------------------------------------


def test_malformed_jsonl_data_names_the_file_and_line(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": 2\n')
    result = runner.invoke(app, ["train", TINY, f"data.path={data}", f"output_dir={tmp_path}"])
    assert result.exit_code == 2
    assert f"data.path: {data} line 2 is not valid JSON" in result.output


def test_output_dir_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["train", TINY, f"output_dir={tmp_path / 'file' / 'sub'}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "NotADirectoryError" in result.output and "output_dir=" in result.output


@pytest.mark.slow
def test_file_size_limit_zero_is_one_line(tmp_path):
    import resource

    def no_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    cli = Path(sys.executable).parent / "eggroll-rl"
    out = subprocess.run([str(cli), "train", TINY, f"output_dir={tmp_path}"], preexec_fn=no_files, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) <= 3  # one message, wrapped at most by the terminal width
    assert "error:" in out.stderr


# -- resume does not mix two recipes --------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_overrides_that_change_the_math(tmp_path):
    assert runner.invoke(app, ["train", TINY, "train.steps=2", f"output_dir={tmp_path}"]).exit_code == 0
    run = str(tmp_path / "tiny")
    refused = runner.invoke(app, ["train", "--resume", run, "es.lr=0.1"])
    assert refused.exit_code == 2 and "es.lr would change what the run computes" in " ".join(refused.output.split())
    assert runner.invoke(app, ["train", "--resume", run, "train.steps=3"]).exit_code == 0


def test_resume_refuses_more_steps_under_a_schedule(tmp_path):
    from eggroll_rl.config import load_config
    from eggroll_rl.run_dir import resume_change_problem

    saved = load_config(TINY, ["es.lr_schedule=cosine"])
    assert "train.steps (the lr/sigma schedule spans" in resume_change_problem(saved, load_config(TINY, ["es.lr_schedule=cosine", "train.steps=9"]))
    assert resume_change_problem(saved, load_config(TINY, ["es.lr_schedule=cosine", "train.eval_every=1"])) is None


# -- Ctrl-C while vLLM generates ------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_ctrl_c_during_vllm_generation_is_one_line_and_engine_noise_goes_to_the_log(tmp_path):
    pytest.importorskip("vllm")
    cli = Path(sys.executable).parent / "eggroll-rl"
    proc = subprocess.Popen([str(cli), "train", TINY, "backend=vllm", "train.steps=1000", "train.eval_every=0",
                             f"output_dir={tmp_path}"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    metrics = tmp_path / "tiny" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "interrupted; continue with" in " ".join(err.split())
    assert (tmp_path / "tiny" / "engine.log").stat().st_size > 0
