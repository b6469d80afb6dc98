"""`export --as-adapter` and adapters as models: ΔW -> truncated SVD -> a PEFT LoRA folder, and back.

One tiny run (4 steps, checkpoints at 2 and 4, evals at 0/2/4), its merged export and a full-rank
adapter of it (``--energy 1``); the tests read and re-export them. The Hub push of an adapter is in
test_export.py (with the Hub stand-in).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eggroll_rl.adapter import ADAPTER_WEIGHTS, RankChoice, factorize
from eggroll_rl.params import load_tensors

from support import DATA, TINY
from support.export import (cli, error_lines, greedy_completions, leftovers, log_only_copy, until_eos,
                            vllm_completions)

RUN_OVERRIDES = [DATA, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
MODULES = {f"model.layers.{i}.{m}" for i in range(2) for m in
           ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def modules_and_ranks(folder) -> dict[str, int]:
    """{module: rank} of an adapter folder, from its lora_A shapes."""
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    assert all(re.fullmatch(r"base_model\.model\.model\.layers\.\d\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight", k) for k in tensors)
    return {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): t.shape[0]
            for k, t in tensors.items() if k.endswith("lora_A.weight")}


def peft_model(base_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(adapter))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = cli("train", TINY, *RUN_OVERRIDES, f"output_dir={out}", "run_name=tiny")
    assert result.exit_code == 0, result.output
    return out / "tiny"


@pytest.fixture(scope="module")
def base_dir(run):
    return Path(json.loads((run / "checkpoints" / "step_000004" / "trainer_state.json").read_text())["base_model"])


@pytest.fixture(scope="module")
def merged(run):
    result = cli("export", run)
    assert result.exit_code == 0, result.output
    return run / "export"


@pytest.fixture(scope="module")
def full(run):
    """The full-rank adapter (every matrix at its exact rank), evaluated by the export."""
    result = cli("export", run, "--as-adapter", "--energy", 1)
    assert result.exit_code == 0, result.output
    assert "as a LoRA adapter" in result.output
    return run / "adapter-e1"


def deltas(run, base_dir) -> dict[str, torch.Tensor]:
    master = load_file(str(run / "checkpoints" / "step_000004" / "trainer" / "master.safetensors"))
    base = load_tensors(base_dir, list(master), dtype=torch.float32)
    return {n: master[n] - base[n] for n in master}


# -- 1. the folder, in PEFT ------------------------------------------------------------------


def test_full_rank_adapter_is_a_peft_folder_that_reproduces_the_merged_model(run, base_dir, merged, full):
    names = {p.name for p in full.iterdir()}
    assert {"adapter_config.json", ADAPTER_WEIGHTS, "README.md", "training_curves.png", "training"} <= names
    assert not {"model.safetensors", "config.json", "tokenizer.json"} & names and not leftovers(run)
    config = json.loads((full / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["base_model_name_or_path"] == "tiny-random"  # the alias: eggroll-rl rebuilds the exact base by it
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    ranks = modules_and_ranks(full)
    assert set(ranks) == MODULES
    assert config["r"] == config["lora_alpha"] == max(ranks.values())  # scaling alpha/r = 1
    assert all(t.dtype == torch.float32 for t in load_file(str(full / ADAPTER_WEIGHTS)).values())

    model = peft_model(base_dir, full)
    got = greedy_completions(base_dir, model=model)
    assert got == greedy_completions(merged)  # exactly the merged model's greedy tokens (fp32)
    assert got != greedy_completions(base_dir)
    final = load_file(str(merged / "model.safetensors"))
    weights = model.merge_and_unload().state_dict()
    assert max(float((weights[n] - final[n]).abs().max()) for n in final) < 1e-5  # fp32 SVD rounding; |ΔW| ~ 1 here


def test_the_export_reports_rank_energy_size_and_accuracy_and_eval_takes_the_folder(run, merged, full, tmp_path):
    report = json.loads((full / ".eggroll_export.json").read_text())["adapter"]
    assert report["choice"] == {"energy": 1.0} and report["energy_kept"] == pytest.approx(1.0)
    assert report["worst_energy"] == pytest.approx(1.0) and report["matrices"] == 14
    assert report["adapter_bytes"] == (full / ADAPTER_WEIGHTS).stat().st_size
    assert report["merged_bytes"] == (run / "checkpoints" / "step_000004" / "model.safetensors").stat().st_size
    step4 = [e for e in (json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()) if e["step"] == 4][0]
    assert report["eval_merged"]["accuracy"] == step4["accuracy"] and report["eval_merged"]["n"] == 4  # the run's own eval
    assert report["eval_adapter"]["reward_mean"] == report["eval_merged"]["reward_mean"]  # full rank: same completions
    assert report["difference"] == [0.0, 0.0, 0.0]

    # `eggroll-rl eval` takes the adapter folder (and a run directory as the recipe): base + adapter merged.
    for name, model in (("adapter", full), ("merged", merged)):
        result = cli("eval", model, run, "--out", tmp_path / f"{name}.jsonl")
        assert result.exit_code == 0, result.output
    completions = {name: [json.loads(line)["completion"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                   for name in ("adapter", "merged")}
    assert completions["adapter"] == completions["merged"]


# -- 2. choosing the rank --------------------------------------------------------------------


def test_factorize_keeps_the_top_singular_directions_at_the_asked_rank():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(5, 4, generator=g))
    delta = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])) @ v.T  # energies 16, 9, 4, 1 of 30 (+ a 5th σ of rounding)
    for choice, rank in ((RankChoice(energy=0.53), 1), (RankChoice(energy=0.54), 2), (RankChoice(energy=0.96), 3),
                         (RankChoice(energy=0.97), 4), (RankChoice(rank=2), 2), (RankChoice(rank=4), 4)):
        f = factorize(delta, choice)
        assert f.rank == rank, choice
        assert f.kept / f.total == pytest.approx([16, 25, 29, 30][rank - 1] / 30, abs=1e-6)
        assert f.lora_B.shape == (6, rank) and f.lora_A.shape == (rank, 5)
        residual = float(((delta - f.lora_B @ f.lora_A) ** 2).sum())
        assert residual == pytest.approx(30 - [16, 25, 29, 30][rank - 1], abs=1e-5)  # the best rank-k approximation
    # energy 1 and a rank above the matrix's: every direction, the float rounding's too
    assert factorize(delta, RankChoice(energy=1.0)).rank == factorize(delta, RankChoice(rank=9)).rank == 5
    assert factorize(torch.zeros(3, 3), RankChoice(rank=1)) is None


def test_energy_picks_the_smallest_rank_per_matrix_that_keeps_it(run, base_dir, tmp_path):
    out = tmp_path / "e09"
    result = cli("export", run, "--as-adapter", "--energy", 0.9, "--no-eval", "--out", out)
    assert result.exit_code == 0, result.output
    ranks = modules_and_ranks(out)
    for name, delta in deltas(run, base_dir).items():
        energy = torch.linalg.svdvals(delta).double() ** 2
        kept = energy.cumsum(0) / energy.sum()
        k = ranks[name.removesuffix(".weight")]
        assert kept[k - 1] >= 0.9 and (k == 1 or kept[k - 2] < 0.9), (name, k)
    config = json.loads((out / "adapter_config.json").read_text())
    r = max(ranks.values())
    assert len(set(ranks.values())) > 1 and config["r"] == config["lora_alpha"] == r
    pattern = {re.escape(m): k for m, k in ranks.items() if k != r}
    assert config["rank_pattern"] == pattern == config["alpha_pattern"]
    worst = float(re.search(r"worst matrix ([\d.]+)%", result.output).group(1))
    assert worst >= 90 and f"{min(ranks.values())} to {r} over 14 matrices" in result.output
    # PEFT builds each matrix at its own rank from the patterns.
    model = peft_model(base_dir, out)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.lora_A["default"].weight.shape[0] == ranks["model.layers.0.mlp.down_proj"]
    assert layer.scaling["default"] == 1.0


def test_rank_caps_at_the_matrix_and_reports_size_and_accuracy(run, tmp_path):
    out = tmp_path / "r2"
    result = cli("export", run, "--as-adapter", "--rank", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert set(modules_and_ranks(out).values()) == {2}
    for needle in ("rank 2 for all 14 matrices; vLLM max_lora_rank >= 8", "energy of ΔW kept:", "of the merged model's weights",
                   "held-out accuracy (step 4, n=4): adapter", "vs merged weights", "adapter − merged:"):
        assert needle in result.output, needle
    huge = cli("export", run, "--as-adapter", "--rank", 100000, "--no-eval", "--out", tmp_path / "huge")
    assert huge.exit_code == 0 and "energy of ΔW kept: 100.00% overall" in huge.output


@pytest.mark.parametrize("args, message", [
    (["--as-adapter", "--rank", "2", "--energy", "0.9"], "--rank and --energy both choose the adapter's rank: give one of them"),
    (["--as-adapter", "--rank", "0"], "--rank: got 0; expected an integer >= 1"),
    (["--as-adapter", "--energy", "0"], "--energy: got 0; expected a fraction of ΔW's energy in (0, 1]"),
    (["--as-adapter", "--energy", "1.5"], "--energy: got 1.5; expected a fraction"),
    (["--rank", "4"], "--rank and --energy choose an adapter's rank; add --as-adapter"),
])
def test_bad_rank_arguments_are_one_line_with_exit_2(run, args, message):
    result = cli("export", run, *args)
    assert result.exit_code == 2 and len(error_lines(result)) == 1 and message in result.stderr


def test_without_checkpoints_it_says_so_and_replay_gives_the_same_adapter(run, tmp_path):
    logs = log_only_copy(run, tmp_path / "logs-only")
    refused = cli("export", logs, "--as-adapter", "--rank", 2)
    assert refused.exit_code == 2 and len(error_lines(refused)) == 1
    assert "no complete checkpoint" in refused.stderr and "--replay" in refused.stderr
    replayed = cli("export", logs, "--replay", "--as-adapter", "--rank", 2, "--no-eval", "--out", tmp_path / "replayed")
    assert replayed.exit_code == 0, replayed.output
    saved = cli("export", run, "--as-adapter", "--rank", 2, "--no-eval", "--out", tmp_path / "saved")
    assert saved.exit_code == 0, saved.output
    a, b = (load_file(str(tmp_path / d / ADAPTER_WEIGHTS)) for d in ("replayed", "saved"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the replayed master is bitwise the saved one


# -- 3. an adapter as the model ---------------------------------------------------------------


def test_training_from_an_adapter_exports_the_change_against_the_original_base(run, base_dir, tmp_path):
    first = tmp_path / "first"
    assert cli("export", run, "--as-adapter", "--rank", 2, "--no-eval", "--out", first).exit_code == 0
    # A second run starts from base + first adapter and trains the q projections only.
    result = cli("train", TINY, DATA, "train.steps=2", "train.eval_every=0", f"model={first}",
                 "es.targets=['.*q_proj\\.weight']", f"output_dir={tmp_path / 'runs'}", "run_name=from-adapter")
    assert result.exit_code == 0, result.output
    second_run = tmp_path / "runs" / "from-adapter"
    state = json.loads((second_run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    start = Path(state["base_model"])  # the merged folder in the cache, recording its base
    assert json.loads((start / "eggroll_source.json").read_text())["base_model"] == "tiny-random"
    assert state["targets"] == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"]

    second = tmp_path / "second"
    exported = cli("export", second_run, "--as-adapter", "--energy", 1, "--no-eval", "--out", second)
    assert exported.exit_code == 0, exported.output
    assert "base: tiny-random" in exported.output
    assert json.loads((second / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random"
    assert set(modules_and_ranks(second)) == MODULES  # the first adapter's matrices and the run's
    # On the ORIGINAL base it is the second run's final model; the untrained matrices keep the first adapter's change.
    assert cli("export", second_run).exit_code == 0
    model = peft_model(base_dir, second)
    assert greedy_completions(base_dir, model=model) == greedy_completions(second_run / "export")
    first_model = peft_model(base_dir, first).merge_and_unload().state_dict()
    weights = model.merge_and_unload().state_dict()
    down = "model.layers.1.mlp.down_proj.weight"
    assert float((weights[down] - first_model[down]).abs().max()) < 1e-5  # a second SVD: fp32 rounding


def test_adapter_specs_resolve_to_a_cached_merge_and_bad_adapters_are_one_line(run, full, base_dir, tmp_path, monkeypatch):
    from eggroll_rl import models
    from eggroll_rl.models import ModelNotFoundError, resolve_model

    merged_dir = resolve_model(str(full))
    assert merged_dir == resolve_model(str(full)) and merged_dir.parent.name == "adapters"  # built once
    expected = peft_model(base_dir, full).merge_and_unload().state_dict()
    got = load_tensors(merged_dir)
    assert max(float((got[n] - expected[n]).abs().max()) for n in got) < 1e-6  # the same B·A added in fp32
    monkeypatch.setattr(models, "_download", lambda repo_id: full)  # a hub id whose snapshot is an adapter
    assert resolve_model("eggroll-org/tiny-lora").parent.name == "adapters"

    bad = tmp_path / "dora"
    bad.mkdir()
    config = json.loads((full / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ModelNotFoundError, match="uses use_dora; only plain LoRA adapters"):
        resolve_model(str(bad))
    (bad / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    result = cli("eval", bad, run)
    assert result.exit_code == 2 and len(error_lines(result)) == 1 and "the base model of the adapter" in result.stderr


# -- 4. vLLM -------------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_adapter_loads_in_vllm_with_a_lora_request(base_dir, merged, full, monkeypatch):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer
    from vllm.lora.request import LoRARequest

    from eggroll_rl.backends.vllm_engine import vllm_lora_rank

    r = json.loads((full / "adapter_config.json").read_text())["r"]
    got = vllm_completions(monkeypatch, base_dir, lora=LoRARequest("eggroll", 1, str(full)),
                           enable_lora=True, max_lora_rank=vllm_lora_rank(r))
    reference = greedy_completions(merged, max_new_tokens=8)
    assert got == until_eos(reference, AutoTokenizer.from_pretrained(merged).eos_token_id)
    assert got != until_eos(greedy_completions(base_dir, max_new_tokens=8), AutoTokenizer.from_pretrained(merged).eos_token_id)
