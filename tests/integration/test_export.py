"""`eggroll-rl export`: HF folder, model card + plot, Hub push (local stand-in), replay from the fitness log.

One tiny run per module (4 steps, Adam with a cosine lr schedule and weight decay so replay has
optimizer state and schedules to get right, evals at steps 0/2/4, checkpoints at 2 and 4), one
default export of it; the tests read and re-export them. Everything runs offline: the Hub is
tests/support/hub_standin.py on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eggroll_rl.exporting import MANIFEST, list_files
from eggroll_rl.params import load_tensors
from eggroll_rl.replay import replay_master

from support import DATA, TINY
from support.export import (cli, error_lines, greedy_completions, leftovers, log_only_copy, until_eos,
                            vllm_completions)
from support.hub_standin import HubStandIn

RUN_OVERRIDES = [
    DATA, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.keep_checkpoints=0",
    "es.optimizer=adam", "es.lr=0.02", "es.lr_schedule=cosine", "es.weight_decay=0.01",
]
TOKEN = "hf_standin_test_token"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = cli("train", TINY, *RUN_OVERRIDES, f"output_dir={out}", "run_name=tiny")
    assert result.exit_code == 0, result.output
    run = out / "tiny"
    assert [e["step"] for e in read_jsonl(run / "eval.jsonl")] == [0, 2, 4]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    return run


@pytest.fixture(scope="module")
def exported(run):
    result = cli("export", run)
    assert result.exit_code == 0, result.output
    assert "exported step 4" in result.output
    return run / "export"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub stand-in, with HF_ENDPOINT/HF_TOKEN pointing at it and no saved login token."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()  # a fresh HTTP client, built with this environment
    with HubStandIn(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server
    close_session()


# -- 1. the folder --------------------------------------------------------------------------


def test_export_is_a_plain_hf_folder_with_the_final_weights(run, exported):
    names = {p for p, _ in list_files(exported)}
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors",
              "README.md", "training_curves.png", "training/config.yaml", "training/fitness.jsonl"):
        assert f in names, f
    assert not any(n.startswith("trainer") for n in names)  # no optimizer state / fp32 master / trainer_state
    # Every tensor under the base checkpoint's name and dtype: no fused (qkv_proj) or LoRA names.
    state = json.loads((run / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    base = load_tensors(state["base_model"])
    weights = load_file(str(exported / "model.safetensors"))
    assert {n: t.dtype for n, t in weights.items()} == {n: t.dtype for n, t in base.items()}
    assert not [n for n in weights if "lora" in n.lower() or "qkv_proj" in n or "gate_up_proj" in n]
    assert tensors_equal(weights, load_file(str(run / "checkpoints" / "step_000004" / "model.safetensors")))
    master = load_file(str(run / "checkpoints" / "step_000004" / "trainer" / "master.safetensors"))
    assert all(torch.equal(weights[n], master[n]) for n in master)  # fp32 base: the master, exactly
    assert any(not torch.equal(weights[n], base[n]) for n in master)  # and training moved it
    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    # Tokenizer with its chat template, generation config with EOS, nothing quantized.
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(exported)
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert GenerationConfig.from_pretrained(exported).eos_token_id == tok.eos_token_id
    assert getattr(AutoConfig.from_pretrained(exported), "quantization_config", None) is None
    assert not leftovers(run)


def test_export_loads_in_transformers_with_the_runs_greedy_completions(run, exported):
    final = run / "checkpoints" / "step_000004"
    got = greedy_completions(exported)
    assert got == greedy_completions(final)
    # The run's final weights as the trainer holds them: base + fp32 master.
    state = json.loads((final / "trainer_state.json").read_text())
    master = load_file(str(final / "trainer" / "master.safetensors"))
    assert got == greedy_completions(state["base_model"], state_dict=master)
    assert got != greedy_completions(state["base_model"])  # the comparison can tell models apart


# -- 2. the model card ----------------------------------------------------------------------


def test_model_card_has_metadata_eval_table_and_plot(run, exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    assert card.data.license == "other"  # tiny-random has no licence anywhere
    assert {"eggroll", "evolution-strategies"} <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    evals = read_jsonl(run / "eval.jsonl")
    before, after = evals[0], evals[-1]
    assert card.data.eval_results[0].metric_value == after["accuracy"]
    text = card.text
    assert "| model | step | accuracy |" in text
    assert f"| base (before) | 0 | {before['accuracy']:.3f} |" in text
    assert f"| EGGROLL (after) | 4 | {after['accuracy']:.3f} |" in text
    assert f"{before['reward_mean']:.3f}" in text and f"{after['reward_mean']:.3f}" in text
    # Recipe and key hyperparameters, steps, wall-clock, the logs' sizes.
    for needle in ("| population (mirrored pairs) | 8 (4) |", "| σ (sigma) | 0.05 |", "adam", "cosine",
                   "- **Steps:** 4", "- **Wall-clock:**", "`math_accuracy`", "`digit_fraction`",
                   "(q_proj\\|k_proj", "Fitness log:"):
        assert needle in text, needle
    # The plot: a real PNG in the folder, referenced by the card.
    assert "](training_curves.png)" in text
    png = exported / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_license_is_inherited_from_readme_metadata_then_known_aliases(tmp_path):
    from eggroll_rl.exporting.card import base_model_id, resolve_license

    with_readme = tmp_path / "a"
    with_readme.mkdir()
    (with_readme / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# a model\n")
    assert resolve_license(with_readme, ["HuggingFaceTB/SmolLM2-135M-Instruct"])[0] == "mit"  # README wins
    bare = tmp_path / "b"
    bare.mkdir()
    assert resolve_license(bare, ["HuggingFaceTB/SmolLM2-135M-Instruct"])[0] == "apache-2.0"
    assert resolve_license(bare, ["", "smollm2-135m-instruct"])[0] == "apache-2.0"
    assert resolve_license(bare, ["meta-llama/Llama-3.2-1B-Instruct"])[0] == "llama3.2"
    assert resolve_license(bare, ["Qwen/Qwen2.5-3B-Instruct"])[0] == "other"  # not apache like its siblings
    assert resolve_license(bare, ["my-private-model"])[0] == "other"
    converted = tmp_path / "c"
    converted.mkdir()
    (converted / "eggroll_source.json").write_text('{"license": "apache-2.0"}')
    assert resolve_license(converted, ["whatever"])[0] == "apache-2.0"
    assert base_model_id("smollm2-135m-instruct", bare) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc"
    assert base_model_id(str(snapshot), snapshot) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert base_model_id("tiny-random", bare) is None


# -- 3. --step, --out, --force ----------------------------------------------------------------


def test_step_export_and_overwrite_rules(run, exported):
    result = cli("export", run, "--step", 2)
    assert result.exit_code == 0, result.output
    out = run / "export-step_2"
    assert tensors_equal(load_file(str(out / "model.safetensors")),
                         load_file(str(run / "checkpoints" / "step_000002" / "model.safetensors")))
    assert len(read_jsonl(out / "training" / "fitness.jsonl")) == 2
    assert [e["step"] for e in read_jsonl(out / "training" / "eval.jsonl")] == [0, 2]

    readme = (exported / "README.md").read_bytes()
    again = cli("export", run)
    assert again.exit_code == 2 and "--force" in again.stderr and len(error_lines(again)) == 1
    assert (exported / "README.md").read_bytes() == readme  # untouched
    forced = cli("export", run, "--step", 2, "--force")
    assert forced.exit_code == 0, forced.output

    missing = cli("export", run, "--step", 3)
    assert missing.exit_code == 2 and "checkpoints: 2, 4" in missing.stderr and "--replay --step 3" in missing.stderr
    assert not (run / "export-step_3").exists() and not leftovers(run)


# -- 4. replay ------------------------------------------------------------------------------


def test_replay_from_the_fitness_log_alone_is_bitwise_equal(run, exported, tmp_path):
    logs = log_only_copy(run, tmp_path / "logs-only")
    result = cli("export", "--replay", logs, "--out", tmp_path / "replayed")
    assert result.exit_code == 0, result.output
    final = run / "checkpoints" / "step_000004"
    replayed = load_file(str(tmp_path / "replayed" / "model.safetensors"))
    assert tensors_equal(replayed, load_file(str(final / "model.safetensors")))
    assert (tmp_path / "replayed" / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()

    master = replay_master(logs).master
    assert tensors_equal(master, load_file(str(final / "trainer" / "master.safetensors")))
    early = replay_master(logs, steps=2)
    assert tensors_equal(early.master, load_file(str(run / "checkpoints" / "step_000002" / "trainer" / "master.safetensors")))
    assert early.checked_steps == 2  # lr, sigma and update norm agreed with metrics.jsonl
    # The exported folder's training/ is itself a replayable run directory.
    assert tensors_equal(replay_master(exported / "training").master, master)

    # Sizes: the log is the run's weights for a tiny fraction of a checkpoint.
    log_bytes = (run / "fitness.jsonl").stat().st_size
    ckpt_bytes = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    assert log_bytes * 100 < ckpt_bytes
    assert "fitness log" in result.output and "steps rebuilt from fitness.jsonl" in result.output

    # With the checkpoint present, the CLI checks the replay against it and says so.
    checked = cli("export", "--replay", run, "--step", 2, "--out", tmp_path / "replayed-2")
    assert checked.exit_code == 0, checked.output
    assert "bitwise equal to checkpoints/step_000002" in checked.output


def test_replay_refuses_a_tampered_or_short_log(run, tmp_path):
    logs = log_only_copy(run, tmp_path / "tampered")
    records = read_jsonl(logs / "fitness.jsonl")
    records[1]["fitness"][0] += 0.5
    (logs / "fitness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = cli("export", "--replay", logs, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "replay diverged from the run at step 1" in result.stderr and len(error_lines(result)) == 1
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)

    short = cli("export", "--replay", run, "--step", 9, "--out", tmp_path / "out")
    assert short.exit_code == 2 and "fitness log has 4 steps" in short.stderr


# -- 5. Hub push (local stand-in) -------------------------------------------------------------


def test_push_uploads_every_file_to_the_hub_standin(run, exported, hub):
    repo = "eggroll-org/tiny-eggroll"
    result = cli("export", run, "--push-to-hub", repo, "--private")
    assert result.exit_code == 0, result.output
    assert "using the existing export" in result.output and "pushed" in result.output

    local = {p: (exported / p).read_bytes() for p, _ in list_files(exported)}
    assert MANIFEST not in local and "model.safetensors" in local and "training_curves.png" in local
    remote = hub.files(repo)
    assert set(remote) == set(local) | {".gitattributes"}
    assert all(remote[p] == data for p, data in local.items())  # every byte arrived
    assert hub.repos[repo].private
    assert f'model_id = "{repo}"' in remote["README.md"].decode()  # the card names its repo

    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert set(api.list_repo_files(repo)) == set(remote)

    # --revision: a new branch with the same files; main untouched.
    commits = len(hub.repos[repo].commits)
    branch = cli("export", run, "--push-to-hub", repo, "--revision", "v1")
    assert branch.exit_code == 0, branch.output
    assert set(api.list_repo_files(repo, revision="v1")) == set(remote)
    assert hub.files(repo, "v1")["model.safetensors"] == local["model.safetensors"]
    assert len(hub.repos[repo].commits) == commits + 1 and hub.repos[repo].commits[-1]["branch"] == "v1"


def test_dry_run_lists_files_and_writes_and_uploads_nothing(run, hub, tmp_path):
    out = tmp_path / "dry"
    result = cli("export", run, "--push-to-hub", "eggroll-org/dry", "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "README.md", "training_curves.png", "tokenizer.json", "training/fitness.jsonl"):
        assert name in result.output, name
    assert "token: found (HF_TOKEN)" in result.output and "nothing was written or uploaded" in result.output
    assert hub.requests == []
    assert not out.exists() and list(tmp_path.iterdir()) == []  # not even a temporary folder


def test_push_without_a_token_is_one_clear_line(run, hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    out = tmp_path / "notoken"
    result = cli("export", run, "--push-to-hub", "eggroll-org/x", "--out", out)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "HF_TOKEN" in lines[0] and "hf auth login" in lines[0]
    assert not out.exists() and not leftovers(tmp_path) and hub.requests == []

    # A saved login is enough.
    from huggingface_hub import constants

    token_file = tmp_path / "login" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    ok = cli("export", run, "--push-to-hub", "eggroll-org/x", "--out", out)
    assert ok.exit_code == 0, ok.output
    assert "hf auth login" in ok.output and "model.safetensors" in hub.files("eggroll-org/x")


def test_network_failure_is_one_line_and_the_export_stays_complete(run, exported, hub, tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    out = tmp_path / "netfail"
    result = cli("export", run, "--push-to-hub", "eggroll-org/net", "--out", out)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "could not reach the Hub at " + dead in lines[0] and "rerun" in lines[0]
    # The local export is whole: same files as a normal export, weights intact, nothing temporary.
    assert [p for p, _ in list_files(out)] == [p for p, _ in list_files(exported)]
    assert tensors_equal(load_file(str(out / "model.safetensors")), load_file(str(exported / "model.safetensors")))
    assert not leftovers(tmp_path)

    # Rerunning once the network is back uploads the same folder.
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    retry = cli("export", run, "--push-to-hub", "eggroll-org/net", "--out", out)
    assert retry.exit_code == 0, retry.output
    assert "using the existing export" in retry.output
    assert hub.files("eggroll-org/net")["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_http_errors_are_one_line(run, exported, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    rejected = cli("export", run, "--push-to-hub", "eggroll-org/x")
    assert rejected.exit_code == 1
    assert len(error_lines(rejected)) == 1 and "rejected the token (HTTP 401" in rejected.stderr

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.fail["commit"] = (403, "You don't have the rights to write to this repository")
    forbidden = cli("export", run, "--push-to-hub", "eggroll-org/x")
    assert forbidden.exit_code == 1
    assert len(error_lines(forbidden)) == 1
    assert "no write access to 'eggroll-org'" in forbidden.stderr and "(HTTP 403: You don't have the rights" in forbidden.stderr
    assert (exported / "model.safetensors").is_file()

    bad = cli("export", run, "--push-to-hub", "not a repo")
    assert bad.exit_code == 2 and "ORG/NAME" in bad.stderr


def test_adapter_push_has_a_peft_card_that_names_its_base(run, hub, tmp_path):
    from huggingface_hub import ModelCard

    repo = "eggroll-org/tiny-lora"
    result = cli("export", run, "--as-adapter", "--rank", 2, "--no-eval", "--out", tmp_path / "lora", "--push-to-hub", repo)
    assert result.exit_code == 0, result.output
    assert "as a LoRA adapter" in result.output and "pushed" in result.output
    remote = hub.files(repo)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training/fitness.jsonl"} <= set(remote)
    assert not {"model.safetensors", "config.json", MANIFEST} & set(remote)
    assert all(remote[p] == (tmp_path / "lora" / p).read_bytes() for p in remote if p != ".gitattributes")
    assert "LoRA adapter" in hub.repos[repo].commits[-1]["summary"]
    card = ModelCard(remote["README.md"].decode())
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert "A LoRA adapter (PEFT) of `tiny-random`" in card.text
    assert 'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("path/to/tiny-random"), model_id)' in card.text
    assert f'LoRARequest("eggroll", 1, "{repo}")' in card.text and "max_lora_rank=8" in card.text


# -- 6. vLLM ---------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_export_loads_in_vllm_with_the_same_greedy_completions(exported, monkeypatch):
    from transformers import AutoTokenizer

    reference = until_eos(greedy_completions(exported, max_new_tokens=8), AutoTokenizer.from_pretrained(exported).eos_token_id)
    assert vllm_completions(monkeypatch, exported) == reference
