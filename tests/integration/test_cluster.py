"""The population on Ray workers: the same run as one process, bit for bit; a killed worker is
replaced without changing the run; a drifting one is caught."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from eggroll_rl.cli import app
from eggroll_rl.cluster import member_ranges

from support import TINY

pytest.importorskip("ray")
# Greedy members: the PyTorch backend's sampling draws from one random stream per batch, so only
# greedy decoding gives a member the same tokens whichever worker (and batch) it is in.
COMMON = ["generation.temperature=0", "train.eval_every=0", "train.checkpoint_every=1", "train.keep_checkpoints=0"]
runner = CliRunner()


def fitness(run):
    return [json.loads(line)["fitness"] for line in (run / "fitness.jsonl").read_text().splitlines()]


def master(run, step=3):
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "trainer" / "master.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_member_ranges_keep_pairs_together_and_cover_everyone():
    assert member_ranges(16, 3) == [range(0, 10), range(10, 22), range(22, 32)]
    assert [m for r in member_ranges(4, 4) for m in r] == list(range(8))


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    assert runner.invoke(app, ["train", TINY, *COMMON, "run_name=one", f"output_dir={out}"]).exit_code == 0
    return out / "one"


@pytest.mark.slow
def test_two_workers_give_the_run_of_one_bit_for_bit(one_worker, tmp_path):
    result = runner.invoke(app, ["train", TINY, *COMMON, "cluster.workers=2", "run_name=two", f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "two"
    assert fitness(run) == fitness(one_worker) and same(master(run), master(one_worker))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # seeds, prompts, rewards and fitness only: a few KB per step, no weights
    assert all(m["cluster/workers"] == 2 and 0 < m["cluster/bytes"] < 100_000 for m in metrics)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_run_is_unchanged(one_worker, tmp_path, monkeypatch):
    import ray

    from eggroll_rl.cluster import RayPopulation

    real = RayPopulation.rollout

    def kill_then_rollout(self, step, *args, **kwargs):
        if step == 1:
            ray.kill(self.slots[1])  # dies between steps: the step's call finds it gone
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(RayPopulation, "rollout", kill_then_rollout)
    result = runner.invoke(app, ["train", TINY, *COMMON, "cluster.workers=2", "cluster.check_every=1",
                                 "run_name=killed", f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "killed"
    assert fitness(run) == fitness(one_worker) and same(master(run), master(one_worker))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["cluster/workers"] for m in metrics] == [2, 2, 2]  # replaced (and hash-checked) after step 2


@pytest.mark.slow
def test_a_drifting_worker_is_caught_with_one_line(tmp_path, monkeypatch):
    from eggroll_rl.cluster import RayPopulation

    real = RayPopulation.update

    def update_then_drift(self, step, *args, **kwargs):
        real(self, step, *args, **kwargs)
        if step == 0:  # the trainer's master drifts from the workers', as a silent divergence would
            next(iter(self.learner.master.values())).view(-1)[0] += 1e-3

    monkeypatch.setattr(RayPopulation, "update", update_then_drift)
    result = runner.invoke(app, ["train", TINY, *COMMON, "cluster.workers=2", "cluster.check_every=2",
                                 "run_name=drift", f"output_dir={tmp_path}"])
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert "master weights differ from the trainer's after step 2" in line and "--resume" in line
    assert sorted(p.name for p in (tmp_path / "drift" / "checkpoints").iterdir()) == ["step_000001"]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_on_two_workers_one_core_each(tmp_path):
    pytest.importorskip("vllm")
    result = runner.invoke(app, ["train", TINY, "backend=vllm", "cluster.workers=2", "train.steps=2", f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["cluster/workers"] == 2 for m in metrics)
    assert (tmp_path / "tiny" / "engine-worker0.log").is_file() and (tmp_path / "tiny" / "engine-worker1.log").is_file()
