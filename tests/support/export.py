"""A tiny run driven through the CLI, and the greedy completions of what it exports (transformers,
PEFT or vLLM): shared by the export and adapter tests."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from eggroll_rl.cli import app

QUESTIONS = ["What is 2+2?", "Tom has 3 apples and buys 5 more. How many apples?", "hi"]
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def leftovers(folder):
    """Temporary folders an interrupted/failed export would leave behind."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def greedy_completions(model_dir, max_new_tokens=12, state_dict=None, model=None):
    """Greedy token ids for QUESTIONS from the model in `model_dir` (or `model`, e.g. a PEFT model, with
    the tokenizer of `model_dir`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = (model or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=False)
    outs = []
    with torch.no_grad():
        for q in QUESTIONS:
            x = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
            y = model.generate(**x, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            outs.append(y[0, x["input_ids"].shape[1]:].tolist())
    return outs


def log_only_copy(run, dest):
    """The run directory without any saved weights: recipe and logs only."""
    dest.mkdir()
    for name in ("config.yaml", "fitness.jsonl", "metrics.jsonl", "eval.jsonl"):
        shutil.copyfile(run / name, dest / name)
    return dest


def vllm_completions(monkeypatch, model_dir, max_new_tokens=8, lora=None, **engine):
    """Greedy token ids for QUESTIONS from vLLM CPU in fp32 (with `lora`, a LoRARequest, per request)."""
    pytest.importorskip("vllm")
    import os

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    n = os.cpu_count() or 1
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{n - 1}"))
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"))
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    # enforce_eager: the same weights and kernels without torch.compile (engine start 25 s instead of ~2 min on 2 CPUs)
    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=256, max_num_seqs=8, seed=0, enforce_eager=True, **engine)
    try:
        prompts = [{"prompt_token_ids": tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                                return_dict=False)} for q in QUESTIONS]
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new_tokens), lora_request=lora)
    finally:
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
    return [list(out.outputs[0].token_ids) for out in outs]


def until_eos(completions, eos):
    """Token ids cut after the first EOS, where vLLM stops."""
    return [ids[: ids.index(eos) + 1] if eos in ids else ids for ids in completions]
