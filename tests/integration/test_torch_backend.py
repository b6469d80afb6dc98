import pytest
import torch

from eggroll_rl.backends.torch_backend import (
    ModelDoesNotFitError,
    TorchBackend,
    plan_batches,
    row_bytes,
    truncate_at_stop,
    weights_fit_or_raise,
)
from eggroll_rl.config import DataConfig, GenerationConfig
from eggroll_rl.data import PromptLengths, prompt_ids
from eggroll_rl.noise import NoiseSpec
from eggroll_rl.params import load_tensors

from support import TEST_DEVICE

QUESTIONS = ["What is 2+3?", "Name a color.", "Count to five please, slowly."]


@pytest.fixture(scope="module")
def backend(tiny_model_dir, tiny_targets):
    return TorchBackend(tiny_model_dir, tiny_targets, device=TEST_DEVICE, compile=False)


@pytest.fixture(scope="module")
def prompts(backend):
    return [prompt_ids(backend.tokenizer, q, DataConfig()) for q in QUESTIONS]


def test_population_equals_explicitly_perturbed_models(tiny_model_dir, tiny_targets, backend, prompts):
    gen = GenerationConfig(max_new_tokens=12)
    noise = NoiseSpec(seed=1, step=3, sigma=0.1, rank=2)
    members = [0, 1, 4, 5]
    population = backend.generate(prompts, gen, noise, members).texts
    base = backend.generate(prompts, gen).texts[0]
    reference = TorchBackend(tiny_model_dir, tiny_targets, device=TEST_DEVICE, compile=False)
    weights = load_tensors(tiny_model_dir, tiny_targets)
    for i, m in enumerate(members):
        reference.load_weights({n: w + noise.perturbation(m, n, tuple(w.shape)) for n, w in weights.items()})
        assert population[i] == reference.generate(prompts, gen).texts[0]
        assert population[i] != base  # the perturbation is visible, or the test proves nothing
    assert population[0] != population[1]  # mirrored members differ


def test_rows_layout_and_chunking_agree(backend, prompts):
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, samples_per_prompt=2)
    noise = NoiseSpec(seed=0, step=0, sigma=0.05, rank=1)
    whole = backend.generate(prompts, gen, noise, range(4), seed=5)
    again = backend.generate(prompts, gen, noise, range(4), seed=5)
    assert len(whole.texts) == 4 and len(whole.texts[0]) == 3 and len(whole.texts[0][0]) == 2
    assert whole.texts == again.texts  # seeded sampling is reproducible
    assert whole.new_tokens == sum(whole.lengths()) > 0
    assert len(whole.token_ids) == 4 and len(whole.token_ids[0][0]) == 2 and all(n <= 6 for n in whole.lengths())
    forced = backend.generate(prompts, GenerationConfig(max_new_tokens=3, ignore_eos=True), noise, range(2))
    assert forced.lengths() == [3] * 6 and forced.clipped_ratio() == 1.0  # every row cut at max_new_tokens
    greedy = GenerationConfig(max_new_tokens=6, max_batch_rows=5)
    chunked = backend.generate(prompts, greedy, noise, range(4)).texts
    assert chunked == backend.generate(prompts, GenerationConfig(max_new_tokens=6), noise, range(4)).texts


def test_load_weights_changes_base_outputs(tiny_model_dir, tiny_targets, prompts):
    be = TorchBackend(tiny_model_dir, tiny_targets, device=TEST_DEVICE, compile=False)
    gen = GenerationConfig(max_new_tokens=10)
    before = be.generate(prompts, gen).texts
    weights = load_tensors(tiny_model_dir, tiny_targets)
    be.load_weights({n: w * 1.5 for n, w in weights.items()})
    assert be.generate(prompts, gen).texts != before
    be.load_weights(weights)
    assert be.generate(prompts, gen).texts == before


def test_batches_are_whole_segments_of_one_pair_each():
    # whole pairs in order: segments of a pair's rows (2 members x 3 rows), as many per batch as fit
    batches = plan_batches(range(6), 3, 13)
    assert [(b.start, b.stop, b.pairs) for b in batches] == [(0, 12, [0, 1]), (12, 18, [2])]
    assert batches[0].signs == [1.0] * 3 + [-1.0] * 3 + [1.0] * 3 + [-1.0] * 3
    # members that are not whole pairs: one member per segment
    batches = plan_batches([0, 1, 5], 2, 4)
    assert [(b.start, b.stop, b.pairs, b.signs) for b in batches] == [(0, 4, [0, 0], [1.0, 1.0, -1.0, -1.0]),
                                                                      (4, 6, [2], [-1.0, -1.0])]
    # a segment longer than a batch: pieces, one segment each
    batches = plan_batches([2, 3], 5, 4)
    assert [(b.start, b.stop, b.pairs) for b in batches] == [(0, 4, [1]), (4, 8, [1]), (8, 10, [1])]
    assert [b.signs for b in batches] == [[1.0] * 4, [1.0, -1.0, -1.0, -1.0], [-1.0, -1.0]]


def test_batch_memory_and_a_model_too_large_for_the_gpu(tiny_model_dir):
    from transformers import AutoConfig

    import torch as t

    config = AutoConfig.from_pretrained(tiny_model_dir)
    small, large = row_bytes(config, t.bfloat16, 10, 10), row_bytes(config, t.bfloat16, 100, 100)
    assert 0 < small < large and row_bytes(config, t.float32, 10, 10) > small
    weights_fit_or_raise("m", 10 * 10**9, 20 * 10**9, "bfloat16", small)  # fits: no error
    with pytest.raises(ModelDoesNotFitError, match=r"model big: 16.0 GB of weights in bfloat16 do not fit in the GPU's "
                       r"12.0 GB free; up to about 6.0B parameters fit in bfloat16"):
        weights_fit_or_raise("big", 16 * 10**9, 12 * 10**9, "bfloat16", 0)
    with pytest.raises(ModelDoesNotFitError, match="dtype=bfloat16 halves the weights"):
        weights_fit_or_raise("big", 32 * 10**9, 24 * 10**9, "float32", 0)


@pytest.mark.slow
def test_compiled_static_cache_generation_equals_the_eager_one(tiny_model_dir, tiny_targets, backend, prompts):
    """generation.compile=true (a GPU's default): static KV cache, compiled decode, the factors
    in fixed buffers. The same completions as the eager path, batch after batch."""
    compiled = TorchBackend(tiny_model_dir, tiny_targets, device=TEST_DEVICE, compile=True,
                            prompt_lengths=PromptLengths.of(prompts))
    gen = GenerationConfig(max_new_tokens=10, max_batch_rows=6)
    for step in range(2):  # new factors in the same buffers
        noise = NoiseSpec(seed=2, step=step, sigma=0.1, rank=2)
        assert compiled.generate(prompts, gen, noise, range(4)).texts == backend.generate(prompts, gen, noise, range(4)).texts
    assert compiled.generate(prompts, gen).texts == backend.generate(prompts, gen).texts


def test_stop_strings_are_excluded():
    assert truncate_at_stop("abc\n\ndef", ["\n\n"]) == "abc"
    assert truncate_at_stop("abcXdefY", ["Y", "X"]) == "abc"
    assert truncate_at_stop("abc", []) == "abc"


def test_hooks_are_inactive_outside_population_generation(backend, prompts):
    ids = torch.tensor([prompts[0]], device=backend.device)
    with torch.no_grad():
        a = backend.model(ids).logits
        backend.generate(prompts[:1], GenerationConfig(max_new_tokens=2), NoiseSpec(0, 0, 0.5, 1), [0])
        b = backend.model(ids).logits
    assert torch.equal(a, b)


def test_auto_dtype_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    from eggroll_rl import machine

    amx = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
    plain = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
    assert machine.cpu_has_native_bf16(amx) and not machine.cpu_has_native_bf16(plain)
    assert machine.cpu_has_native_bf16("flags : avx512_bf16\n")
    # One model name covers CPUs with and without native bf16: figures name family and model too.
    zen4 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512_bf16\n"
    assert machine.cpu_name(zen4) == "AMD EPYC (family 25, model 17)"
    assert machine.native_bf16_flags(zen4 + zen4) == ["avx512_bf16"]
    monkeypatch.setattr(machine, "cpu_has_native_bf16", lambda: False)
    assert machine.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(machine, "cpu_has_native_bf16", lambda: True)
    assert machine.resolve_dtype("auto", "cpu") == "bfloat16"
    assert machine.resolve_dtype("float32", "cpu") == "float32"  # an explicit choice stands


def test_kv_cache_is_sized_from_the_recipes_batches(tiny_model_dir):
    from eggroll_rl.backends.vllm_engine import kv_cache_bytes, rows_per_call
    from eggroll_rl.config import load_config

    per_token = 2 * 2 * 1 * 32 * 2  # K and V, 2 layers, 1 KV head, head_dim 32, bf16
    # 300 rows of 90 tokens: 256 in flight (vLLM's CPU max_num_seqs), one 128-token block each
    assert kv_cache_bytes(tiny_model_dir, "bfloat16", 300, 90) == 256 * 128 * per_token
    assert kv_cache_bytes(tiny_model_dir, "float32", 10, 200) == 10 * 256 * per_token * 2
    # never less than one sequence of the model's full length (512 positions here)
    assert kv_cache_bytes(tiny_model_dir, "bfloat16", 1, 10) == 512 * per_token
    # blocks of 32: 90 tokens take three, not one of 128
    assert kv_cache_bytes(tiny_model_dir, "bfloat16", 300, 90, block_size=32) == 256 * 96 * per_token
    cfg = load_config(None, ["model=x", "data.path=x.jsonl", "es.population=32", "es.prompts_per_step=16", "data.eval_size=200"])
    assert rows_per_call(cfg) == 512


def test_kv_blocks_on_cpu_share_the_prompts_common_start():
    from eggroll_rl.backends.vllm_engine import CPU_BLOCK_SIZE, cpu_block_size
    from eggroll_rl.data import PromptLengths

    lengths = PromptLengths.of([[1, 2, 3, 4, 9], [1, 2, 3, 5], [1, 2, 3, 4, 7, 7]])
    assert lengths == PromptLengths(longest=6, shared_prefix=3)
    assert PromptLengths.of([]) == PromptLengths(0, 0)
    # the largest block that shares the most of the common start; none fits: vLLM's default
    assert [cpu_block_size(n) for n in (0, 27, 32, 45, 64, 100, 128, 200)] == [CPU_BLOCK_SIZE, 128, 32, 32, 64, 96, 128, 96]
