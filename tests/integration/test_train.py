"""End to end: `eggroll-rl train` on the tiny recipe, resume, and CLI errors (CliRunner)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from eggroll_rl.cli import app
from eggroll_rl.models import resolve_model
from eggroll_rl.params import load_tensors

from support import DATA, TEST_DEVICE, TINY

# The engine on the test device; the compiled decode has its own test (test_torch_backend.py),
# here it would add a compile per batch shape.
ON_DEVICE = (f"device={TEST_DEVICE}", "generation.compile=false")
runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_train_tiny_recipe_writes_complete_run_dir(tmp_path):
    result = run_cli("train", TINY, DATA, *ON_DEVICE, f"output_dir={tmp_path}", "run_name=tiny")
    assert result.exit_code == 0, result.output
    run = tmp_path / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "fitness.jsonl", "samples.jsonl", "eval.jsonl"):
        assert (run / name).is_file(), name
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["new_tokens"] > 0 and "time/generate" in m for m in metrics)
    # the trainer (torch, transformers, the model) plus its math-grading worker: well above 0.2 GB
    assert all(0.2 < m["memory/rss_gb"] <= m["memory/peak_rss_gb"] < 20 for m in metrics)
    assert all(0 <= m["completions/clipped_ratio"] <= 1 and 0 < m["completions/mean_length"] <= 8 for m in metrics)
    assert [e["step"] for e in read_jsonl(run / "eval.jsonl")] == [0, 2, 3]
    fitness = read_jsonl(run / "fitness.jsonl")
    assert len(fitness) == 3 and all(len(f["fitness"]) == 8 for f in fitness)
    final = run / "checkpoints" / "step_000003"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json",
                 "trainer/master.safetensors", "trainer/optimizer.safetensors"):
        assert (final / name).is_file(), name
    assert not list((run / "checkpoints").glob("*.tmp"))
    base = load_tensors(resolve_model("tiny-random"))
    trained = load_file(str(final / "model.safetensors"))
    assert set(trained) == set(base)
    changed = [n for n in base if not torch.equal(base[n], trained[n])]
    assert changed and all(".mlp." in n or ".self_attn." in n for n in changed)  # only targets move
    assert torch.equal(base["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])


def test_bad_override_exits_2_with_one_line(tmp_path):
    result = runner.invoke(app, ["train", TINY, "es.sigmaa=0.1", f"output_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "unknown key 'es.sigmaa'; did you mean 'es.sigma'?" in result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_data_file_fails_before_model_work(tmp_path):
    result = runner.invoke(app, ["train", TINY, "data.path=nope.jsonl", f"output_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "data.path: file 'nope.jsonl' not found" in result.output


def test_existing_run_dir_is_not_overwritten(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "metrics.jsonl").write_text("keep\n")
    result = runner.invoke(app, ["train", TINY, "run_name=tiny", f"output_dir={tmp_path}"])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == "keep\n"


def test_a_recipe_that_names_its_run_trains_again_into_a_new_directory(tmp_path):
    """`eggroll-rl train tiny` twice: the recipe fixes run_name tiny; the second run goes to
    tiny-<timestamp> and the first run's directory is untouched."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "metrics.jsonl").write_text("keep\n")
    result = run_cli("train", "tiny", DATA, *ON_DEVICE, "train.steps=1", "train.eval_every=0", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == "keep\n"
    again = [p for p in tmp_path.iterdir() if p.name.startswith("tiny-")]
    assert len(again) == 1 and (again[0] / "metrics.jsonl").is_file()
    machines = json.loads((again[0] / "machine.json").read_text())  # where the run ran, as resolved
    assert machines[0]["backend"] == "torch" and machines[0]["dtype"] == "float32"
    assert machines[0]["device"] == TEST_DEVICE and machines[0]["noise"] in ("philox-numpy", "philox-torch")
    assert machines[0]["cpu"] and "torch" in machines[0]


def test_recipes_lists_shipped_recipes():
    result = run_cli("recipes")
    assert result.exit_code == 0
    assert "tiny" in result.output and "Smoke test" in result.output


def test_engine_failure_mid_run_is_one_line_and_resumable(tmp_path, monkeypatch):
    from eggroll_rl.backends.torch_backend import TorchBackend

    real_generate = TorchBackend.generate
    calls = {"n": 0}

    def dying_generate(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # eval at step 0, step 1 rollout, then the engine dies
            raise RuntimeError("EngineDeadError: engine core process died\nmore detail")
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(TorchBackend, "generate", dying_generate)
    result = runner.invoke(app, ["train", TINY, DATA, *ON_DEVICE, "train.checkpoint_every=1", f"output_dir={tmp_path}"])
    assert result.exit_code == 1
    assert "training stopped: RuntimeError: EngineDeadError: engine core process died" in result.output
    assert f"--resume {tmp_path / 'tiny'}" in result.output.replace("\n", "")
    assert "Traceback" in (tmp_path / "tiny" / "error.log").read_text()
    assert (tmp_path / "tiny" / "checkpoints" / "step_000001").is_dir()
    monkeypatch.setattr(TorchBackend, "generate", real_generate)
    assert runner.invoke(app, ["train", "--resume", str(tmp_path / "tiny")]).exit_code == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_train_tiny_recipe_on_vllm(tmp_path):
    """The tiny recipe samples (temperature 1) with seeded requests: this crashed vLLM's CPU
    engine while prefills were chunked. It must run end to end and move the weights."""
    pytest.importorskip("vllm")
    result = runner.invoke(app, ["train", TINY, DATA, "backend=vllm", f"output_dir={tmp_path}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = read_jsonl(tmp_path / "tiny" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["new_tokens"] > 0 for m in metrics)
    assert all(m["time/population_setup"] > 0 for m in metrics)
    # Completion lengths come from vLLM's token ids (tiny recipe: max_new_tokens 8).
    assert all(0 <= m["completions/clipped_ratio"] <= 1 and 0 < m["completions/mean_length"] <= 8 for m in metrics)
    base = load_tensors(resolve_model("tiny-random"))
    trained = load_file(str(tmp_path / "tiny" / "checkpoints" / "step_000003" / "model.safetensors"))
    assert any(not torch.equal(base[n], trained[n]) for n in base)


def test_validation_rows_are_carved_off_training_and_never_overlap():
    from eggroll_rl.config import load_config
    from eggroll_rl.data import load_rows

    base = load_config(TINY, [DATA, "data.validation_size=8"])
    train, held_out = load_rows(base.data)
    _, validation = load_rows(load_config(TINY, [DATA, "data.validation_size=8", "data.evaluate_on=validation"]).data)
    questions = [{r["question"] for r in rows} for rows in (train, validation, held_out)]
    assert [len(q) for q in questions] == [32 - 4 - 8, 8, 4]
    assert not (questions[0] & questions[1]) and not (questions[0] & questions[2]) and not (questions[1] & questions[2])


def test_validation_carves_questions_not_rows(tmp_path):
    """A question repeated in the training data goes to validation whole: none of its copies is trained on."""
    from eggroll_rl.config import load_config
    from eggroll_rl.data import load_rows

    questions = ["1 + 1 =", "2 + 2 =", "1 + 1 =", "3 + 3 =", "1 + 1 =", "4 + 4 =", "2 + 2 =", "5 + 5 ="]
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "0"}) + "\n" for q in questions))
    recipe = [f"data.path={path}", "data.eval_size=0", "train.eval_every=0", "data.shuffle_seed=3", "data.evaluate_on=validation"]
    train, validation = load_rows(load_config(TINY, [*recipe, "data.validation_size=2"]).data)
    carved = {r["question"] for r in validation}
    assert len(validation) == len(carved) == 2
    assert not carved & {r["question"] for r in train}
    assert len(train) == len(questions) - sum(questions.count(q) for q in carved) > 0
    with pytest.raises(Exception, match="data.validation_size: 5 leaves no training rows out of 8 \\(5 distinct questions\\)"):
        load_rows(load_config(TINY, [*recipe, "data.validation_size=5"]).data)

@pytest.mark.slow
def test_time_budget_stops_after_the_step_that_reaches_it(tmp_path):
    result = run_cli("train", TINY, DATA, *ON_DEVICE, "train.steps=50", "train.time_budget_minutes=0.0001", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_jsonl(tmp_path / "tiny" / "metrics.jsonl")] == [1]
    assert (tmp_path / "tiny" / "checkpoints" / "step_000001").is_dir()
    assert [e["step"] for e in read_jsonl(tmp_path / "tiny" / "eval.jsonl")] == [0, 1]


@pytest.mark.slow
def test_run_records_its_noise_generator_and_old_runs_keep_theirs(tmp_path):
    import yaml

    from eggroll_rl.replay import replay_master
    from eggroll_rl.run_dir import RunDir

    result = run_cli("train", TINY, DATA, *ON_DEVICE, "train.eval_every=0", "train.steps=2", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    run = tmp_path / "tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["es"]["noise"] == ("philox-torch" if TEST_DEVICE == "cuda" else "philox-numpy")
    assert RunDir(run).load_config().es.noise == saved["es"]["noise"]
    # A run directory written before es.noise existed: its noise was philox-numpy's.
    del saved["es"]["noise"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert RunDir(run).load_config().es.noise == "philox-numpy"
    assert RunDir(run).load_config(["es.noise=philox-torch"]).es.noise == "philox-torch"


@pytest.mark.slow
@pytest.mark.skipif(TEST_DEVICE == "cpu", reason="needs EGGROLL_TEST_DEVICE, e.g. cuda")
def test_master_on_the_device_writes_the_same_checkpoint_format_and_replays(tmp_path):
    from eggroll_rl.replay import replay_master

    result = run_cli("train", TINY, DATA, *ON_DEVICE, "es.master_device=cuda", "es.optimizer=adam", "es.lr=0.01",
                     "train.eval_every=0", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    final = tmp_path / "tiny" / "checkpoints" / "step_000003"
    master = load_file(str(final / "trainer" / "master.safetensors"))
    optimizer = load_file(str(final / "trainer" / "optimizer.safetensors"))
    assert master and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in master.values())
    assert any(k.endswith("::exp_avg_sq") for k in optimizer)
    replayed = replay_master(tmp_path / "tiny").master  # on the CPU: the same update, other rounding
    assert all(torch.allclose(replayed[n], master[n], atol=1e-5) for n in master)


def test_master_on_a_gpu_without_one_is_one_line_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["train", TINY, DATA, "es.master_device=cuda", f"output_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "es.master_device=cuda needs the PyTorch backend on a GPU" in " ".join(result.output.split())


@pytest.mark.slow
def test_a_time_budget_fixes_the_schedule_horizon_once_and_replays_exactly(tmp_path):
    """train.steps 0: the horizon is what the budget holds at the first rollout's pace, recorded in
    config.yaml before the first update, so the cosine is one schedule and replay is exact."""
    import yaml

    from eggroll_rl.replay import replay_master

    result = run_cli("train", TINY, DATA, *ON_DEVICE, "train.steps=0", "train.time_budget_minutes=0.02",
                     "es.lr_schedule=cosine", "train.eval_every=0", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    run = tmp_path / "tiny"
    steps = yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert steps >= 2 and 1 <= len(metrics) <= steps
    replayed = replay_master(run)  # compares every step's lr with metrics.jsonl, exactly
    assert replayed.checked_steps == len(metrics)
    saved = load_file(str(sorted((run / "checkpoints").iterdir())[-1] / "trainer" / "master.safetensors"))
    same = torch.equal if TEST_DEVICE == "cpu" else lambda a, b: torch.allclose(a, b, atol=1e-5)  # GPU vs CPU rounding
    assert all(same(replayed.master[n].cpu(), saved[n]) for n in saved)
    bad = run_cli("train", TINY, "train.steps=0", f"output_dir={tmp_path}", "run_name=x")
    assert bad.exit_code == 2 and "or 0 with train.time_budget_minutes > 0" in " ".join(bad.output.split())
