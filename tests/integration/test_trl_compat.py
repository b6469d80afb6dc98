"""TRL users' rewards and datasets work unchanged: keyword calls (prompts=, completions=,
completion_ids=, every column), conversational completions, TRL's standard and conversational
dataset formats, and a `module:function` reward from the current folder via the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eggroll_rl.backends.base import Rollout
from eggroll_rl.cli import app
from eggroll_rl.config import DataConfig, load_config
from eggroll_rl.data import load_rows, prompt_ids
from eggroll_rl.models import resolve_model
from eggroll_rl.scoring import recipe_reward, score_rollout

from support import TINY

runner = CliRunner()
QUESTIONS = [("What is 2 + 2?", "4"), ("What is 3 * 5?", "15"), ("What is 10 - 7?", "3"), ("What is 8 / 2?", "4")]
seen: dict[str, list] = {}


def open_r1_format_reward(completions, **kwargs):
    """open-r1's style: conversational completions, read as completion[0]["content"]."""
    return [1.0 if c[0]["content"].startswith("<think>") else 0.0 for c in completions]


def prompts_and_columns_reward(prompts, completions, **kwargs):
    """Records what TRL passes: prompts, completion_ids and the dataset's own columns."""
    seen.update(prompts=prompts, completions=completions, kwargs=sorted(kwargs), completion_ids=kwargs["completion_ids"])
    return [float(len(p) > 0) for p in prompts]


def trl_116_logging_reward(completions, trainer_state, log_extra, log_metric, **kwargs):
    """A TRL 1.16 reward: reads the trainer's state, logs a column and a scalar."""
    lengths = [len(c) for c in completions]
    log_extra("length", lengths)
    log_metric("custom/mean_length", sum(lengths) / len(lengths))
    log_metric("custom/step_seen", float(trainer_state.global_step))
    return [float(n % 2) for n in lengths]


@pytest.fixture
def datasets(tmp_path):
    standard, conversational = tmp_path / "standard.jsonl", tmp_path / "conversational.jsonl"
    standard.write_text("".join(json.dumps({"prompt": q, "solution": a, "level": 1}) + "\n" for q, a in QUESTIONS * 3))
    conversational.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "solution": a}) + "\n"
                                      for q, a in QUESTIONS * 3))
    return standard, conversational


def _cfg(path: Path, *rewards: str):
    return load_config(None, ["model=tiny-random", f"data.path={path}", "data.answer_field=null", "data.eval_size=4",
                              f"rewards={list(rewards or ['format'])}"])


def test_trl_dataset_formats_load_and_prompt_alike(datasets):
    standard, conversational = datasets
    (s_train, _), (c_train, _) = load_rows(_cfg(standard).data), load_rows(_cfg(conversational).data)
    assert s_train[0]["question"] in {q for q, _ in QUESTIONS} and s_train[0]["answer"] is None
    assert c_train[0]["question"][0]["role"] == "user"
    tok = __import__("transformers").AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    text, messages = "What is 2 + 2?", [{"role": "user", "content": "What is 2 + 2?"}]
    system = DataConfig(system_prompt="Be brief.")
    assert prompt_ids(tok, text, system) == prompt_ids(tok, messages, system)  # the system prompt is added to both


def test_a_response_prefix_is_the_answers_start_as_trl_continues_it():
    tok = __import__("transformers").AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    text, messages = "What is 2 + 2?", [{"role": "user", "content": "What is 2 + 2?"}]
    prefixed = DataConfig(system_prompt="Be brief.", response_prefix="The final answer is")
    ids = prompt_ids(tok, text, prefixed)
    assert ids == prompt_ids(tok, messages, prefixed)
    assert tok.decode(ids).endswith("<|im_start|>assistant\nThe final answer is")
    # What bench/vs_grpo.py hands TRL: the prefix as a final assistant message, which TRL's
    # apply_chat_template continues (continue_final_message) instead of closing.
    trl_form = [{"role": "system", "content": "Be brief."}, *messages, {"role": "assistant", "content": "The final answer is"}]
    rendered = tok.apply_chat_template(trl_form, tokenize=False, continue_final_message=True)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, text, DataConfig(system_prompt="Be brief.")) == prompt_ids(tok, text, prefixed)[: -len(tok("The final answer is", add_special_tokens=False)["input_ids"])]
    raw = DataConfig(chat_template=False, response_prefix=" Answer:")
    assert tok.decode(prompt_ids(tok, text, raw)) == "What is 2 + 2? Answer:"


def test_real_trl_rewards_on_conversational_data(datasets):
    pytest.importorskip("trl")
    _, conversational = datasets
    cfg = _cfg(conversational, "trl.rewards:think_format_reward", "trl.rewards:accuracy_reward",
               "test_trl_compat:open_r1_format_reward", "test_trl_compat:prompts_and_columns_reward")
    _, rows = load_rows(cfg.data)
    answer = "<think>easy</think> The answer is $\\boxed{4}$."
    rollout = Rollout(texts=[[[answer] for _ in rows]], new_tokens=0, seconds=0.0,  # 1 member, 1 sample
                      token_ids=[[[[7, 8]] for _ in rows]])
    scores = score_rollout(rollout, rows, recipe_reward(cfg.rewards), cfg.data)
    think = scores.per_reward["trl.rewards:think_format_reward"][0, :, 0].tolist()
    accuracy = scores.per_reward["trl.rewards:accuracy_reward"][0, :, 0].tolist()
    assert think == [1.0] * len(rows)
    assert accuracy == [1.0 if r["solution"] == "4" else 0.0 for r in rows]  # graded against the `solution` column
    assert scores.per_reward["test_trl_compat:open_r1_format_reward"][0, :, 0].tolist() == [1.0] * len(rows)
    assert seen["prompts"][0] == rows[0]["question"]  # conversational prompts arrive as messages
    assert seen["completions"][0] == [{"role": "assistant", "content": answer}]
    assert {"completion_ids", "solution", "answer", "question"} <= set(seen["kwargs"])
    assert seen["completion_ids"] == [[7, 8]] * len(rows)


@pytest.mark.slow
def test_conversational_dataset_with_trl_reward_trains(datasets, tmp_path):
    pytest.importorskip("trl")
    _, conversational = datasets
    result = runner.invoke(app, ["train", TINY, f"data.path={conversational}", "data.answer_field=null",
                                 "rewards=[trl.rewards:think_format_reward, test_trl_compat:prompts_and_columns_reward]",
                                 "train.steps=1", f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["rewards/test_trl_compat:prompts_and_columns_reward/mean"] == 1.0


@pytest.mark.slow
def test_a_reward_module_in_the_current_folder_imports_through_the_console_script(tmp_path):
    (tmp_path / "my_rewards.py").write_text("def short(completions, **kwargs):\n    return [float(len(c) < 50) for c in completions]\n")
    cli = Path(sys.executable).parent / "eggroll-rl"
    out = subprocess.run([str(cli), "train", "tiny", "rewards=[my_rewards:short]", "train.steps=1", "train.eval_every=0",
                          f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rewards/my_rewards:short/mean" in (tmp_path / "out" / "tiny" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_trl_116_reward_logs_its_metric_and_column_into_the_run(tmp_path):
    result = runner.invoke(app, ["train", TINY, f"output_dir={tmp_path}", "run_name=logs", "train.eval_every=0",
                                 "train.steps=2", "rewards=[test_trl_compat:trl_116_logging_reward]"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["custom/step_seen"] for m in metrics] == [0.0, 1.0]  # trainer_state.global_step: updates applied
    assert all(m["custom/mean_length"] > 0 for m in metrics)
    name = "test_trl_compat:trl_116_logging_reward"
    assert all(m[f"rewards/{name}/std"] >= 0 and 0 <= m["frac_reward_zero_std"] <= 1 for m in metrics)
    samples = [json.loads(line) for line in (tmp_path / "logs" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["length"] == len(s["completion"]) for s in samples)  # log_extra's column
