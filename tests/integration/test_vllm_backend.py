"""vLLM population backend against a transformers reference with explicitly perturbed weights.

Two engines for the whole file (engine start ~20 s on a 2-core CPU):

* ``backend``: all attention + MLP targets, population 6, rank 2, default max_loras (= 6).
* inside test (c): a subset of targets (q, v without k; up without gate; o), population 8,
  rank 1 and max_loras=2, so vLLM must swap adapters in and out of its LoRA slots, and reloads
  must complete fused groups from the checkpoint. Closing it tears down vLLM's process-wide
  parallel groups, so every test that uses ``backend`` comes before it.

The tiny model is a random Llama with hidden 64 and 2 heads: head dim 32 (vLLM's CPU attention
supports 32, 64, 80, ...); its byte-level tokenizer makes prompts of hundreds of tokens easy,
which the prefix-cache test needs (CPU block size 128: only full blocks are cached).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from eggroll_rl.config import GenerationConfig  # noqa: E402
from eggroll_rl.noise import NoiseSpec  # noqa: E402
from eggroll_rl.params import checkpoint_shapes, load_tensors, select_targets  # noqa: E402
from eggroll_rl.tiny_model import build_tiny_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ALL_TARGETS = [r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight"]
SUBSET_TARGETS = [r".*\.(q_proj|v_proj|o_proj|up_proj)\.weight"]
QUESTIONS = ["hi", "What is 2+2?", "Tell me a story about a dragon.", "x"]
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)
LONG = "Consider the following question very carefully and answer it step by step. " * 3
ENGINE = {"max_model_len": 512, "max_num_seqs": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False)
        for q in QUESTIONS
    ]
    # Longer than one KV block (128 tokens on CPU): only full blocks enter the prefix cache, so
    # only these prompts can expose stale cached KV.
    long_prompts = [
        tok.apply_chat_template([{"role": "user", "content": LONG + q}], add_generation_prompt=True, return_dict=False)
        for q in QUESTIONS[:2]
    ]
    assert min(map(len, long_prompts)) > 200
    return {
        "dir": model_dir, "tok": tok, "prompts": prompts, "long_prompts": long_prompts,
        "shapes": checkpoint_shapes(model_dir),
    }


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["dir"], dtype=torch.float32).eval()
    return model


@pytest.fixture(scope="module")
def backend(tiny):
    from eggroll_rl.backends.vllm_backend import VLLMBackend

    targets = select_targets(tiny["shapes"], ALL_TARGETS)
    be = VLLMBackend(tiny["dir"], targets, rank=2, population=6, engine_options=ENGINE)
    assert be.population_products  # CPU: members through vllm_population.py's products
    yield be
    be.close()


def reference(hf, tiny, weights: dict[str, torch.Tensor], prompts, max_new_tokens=GREEDY.max_new_tokens):
    """Greedy transformers completions (token ids, text) with the named weights replaced."""
    params = dict(hf.named_parameters())
    saved = {n: params[n].detach().clone() for n in weights}
    tok = tiny["tok"]
    out_ids, out_texts = [], []
    try:
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
            for ids in prompts:
                x = torch.tensor([ids])
                y = hf.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )[0, x.shape[1]:].tolist()
                if tok.eos_token_id in y:  # vLLM does not return tokens after EOS
                    y = y[: y.index(tok.eos_token_id) + 1]
                out_ids.append(y)
                # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence
                # (the byte-level tokenizer of the random model produces many), decode shows "�".
                out_texts.append(tok.decode(y, skip_special_tokens=True).rstrip("\ufffd"))
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
    return out_ids, out_texts


def perturbed(base: dict[str, torch.Tensor], noise: NoiseSpec, member: int) -> dict[str, torch.Tensor]:
    return {n: w + noise.perturbation(member, n, tuple(w.shape)) for n, w in base.items()}


def base_weights(tiny, targets) -> dict[str, torch.Tensor]:
    return load_tensors(tiny["dir"], targets, dtype=torch.float32)


def base_texts(be, prompts) -> list[str]:
    """Greedy unperturbed completions, one per prompt, as compared with `reference`."""
    roll = be.generate(prompts, GREEDY)
    assert len(roll.texts) == 1 and all(len(r) == 1 for r in roll.texts[0])
    return [r[0].rstrip("\ufffd") for r in roll.texts[0]]


def assert_members_match(be, hf, tiny, base, noise, members, prompts):
    """vLLM rows of `members` == transformers with W + E_m; returns the vLLM texts."""
    roll = be.generate(prompts, GREEDY, noise, members, seed=0)
    assert len(roll.texts) == len(members)
    for j, m in enumerate(members):
        ids, texts = reference(hf, tiny, perturbed(base, noise, m), prompts)
        got_ids = [row[0] for row in roll.token_ids[j]]
        got_texts = [row[0].rstrip("\ufffd") for row in roll.texts[j]]
        assert got_ids == ids, f"member {m}: token ids differ from transformers"
        assert got_texts == texts, f"member {m}: texts differ from transformers"
    return roll


# -- (a) population members == transformers with W + E_m ------------------------------------


@pytest.mark.parametrize("products", [True, False], ids=["population-products", "vllm-kernels"])
def test_members_match_transformers(backend, hf, tiny, products):
    base = base_weights(tiny, backend.targets)
    noise = NoiseSpec(seed=3, step=0, sigma=0.1, rank=2)
    members = [0, 1, 2, 5]
    assert backend.use_population_products(products) == products
    try:
        roll = assert_members_match(backend, hf, tiny, base, noise, members, tiny["prompts"])
    finally:
        backend.use_population_products(True)
    assert roll.new_tokens == sum(roll.lengths()) > 0
    # The test proves something only if members answer differently from each other and the base.
    per_member = [tuple(r[0] for r in rows) for rows in roll.texts]
    assert len(set(per_member)) == len(members), "members gave identical outputs; raise sigma"
    base_roll = backend.generate(tiny["prompts"], GREEDY)
    assert len(base_roll.texts) == 1
    assert tuple(r[0] for r in base_roll.texts[0]) not in set(per_member)
    _, ref_base = reference(hf, tiny, {}, tiny["prompts"])
    assert [r[0].rstrip("\ufffd") for r in base_roll.texts[0]] == ref_base
    assert roll.seconds > 0
    # Adapters are removed after use.
    assert backend._rpc("eggroll_list") == []


# -- (b) new step, same prompts: no stale adapter or prefix-cache reuse -----------------------


def test_next_step_is_not_served_from_stale_cache(backend, hf, tiny):
    prompts = tiny["long_prompts"]
    base = base_weights(tiny, backend.targets)
    members = [0, 1]
    step_t = NoiseSpec(seed=3, step=7, sigma=0.1, rank=2)
    step_t1 = NoiseSpec(seed=3, step=8, sigma=0.1, rank=2)
    roll_t = backend.generate(prompts, GREEDY, step_t, members)
    roll_t1 = assert_members_match(backend, hf, tiny, base, step_t1, members, prompts)
    assert roll_t.texts != roll_t1.texts, "steps t and t+1 gave the same outputs; the test proves nothing"


def test_reused_adapter_name_would_be_stale(backend, tiny, monkeypatch):
    """Sanity check of test (b): with a reused adapter name vLLM really serves stale KV."""
    prompts = tiny["long_prompts"][:1]
    step_t = NoiseSpec(seed=5, step=1, sigma=0.3, rank=2)
    step_t1 = NoiseSpec(seed=5, step=2, sigma=0.3, rank=2)
    fresh = backend.generate(prompts, GREEDY, step_t1, [0]).texts
    monkeypatch.setattr(backend, "_adapter_name", lambda adapter_id, step, member: "reused")
    backend.generate(prompts, GREEDY, step_t, [0])
    stale = backend.generate(prompts, GREEDY, step_t1, [0]).texts
    monkeypatch.undo()
    backend.llm.reset_prefix_cache()
    assert stale != fresh, "reusing a LoRA name did not change outputs: test (b) could not fail"
    again = backend.generate(prompts, GREEDY, step_t1, [0]).texts
    assert again == fresh


# -- sampling, stop strings ------------------------------------------------------------------


def test_sampling_is_seeded_and_stop_strings_are_cut(backend, tiny):
    noise = NoiseSpec(seed=1, step=0, sigma=0.1, rank=2)
    gen = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.95, samples_per_prompt=3)
    a = backend.generate(tiny["prompts"][:2], gen, noise, [0, 1], seed=11)
    b = backend.generate(tiny["prompts"][:2], gen, noise, [0, 1], seed=11)
    c = backend.generate(tiny["prompts"][:2], gen, noise, [0, 1], seed=12)
    assert a.texts == b.texts
    assert a.texts != c.texts
    assert [len(s) for rows in a.texts for s in rows] == [3] * 4
    assert len({s for rows in a.texts for r in rows for s in r}) > 4  # samples differ

    full = backend.generate(tiny["prompts"][:1], GREEDY).texts[0][0][0]
    stop = full[4:6]
    cut = backend.generate(tiny["prompts"][:1], GenerationConfig(max_new_tokens=12, stop=[stop])).texts[0][0][0]
    assert cut == full[: full.index(stop)]


# -- (d) in-place weight update -----------------------------------------------------------


def test_load_weights_updates_base_and_members(backend, hf, tiny, monkeypatch):
    base = base_weights(tiny, backend.targets)
    gen = torch.Generator().manual_seed(0)
    new = {n: w + 0.05 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
    prompts = tiny["prompts"] + tiny["long_prompts"]
    _, before = reference(hf, tiny, {}, prompts)
    _, after = reference(hf, tiny, new, prompts)
    assert before != after, "the update does not change greedy outputs; the test proves nothing"
    assert before[-1] != after[-1]

    with pytest.raises(ValueError, match="fused"):
        backend.load_weights({"model.layers.0.self_attn.q_proj.weight": new["model.layers.0.self_attn.q_proj.weight"]})

    assert base_texts(backend, prompts) == before  # long prompts now in the prefix cache
    backend.load_weights(new)
    assert base_texts(backend, prompts) == after  # not served from the pre-update cache
    noise = NoiseSpec(seed=3, step=1, sigma=0.1, rank=2)
    assert_members_match(backend, hf, tiny, new, noise, [0, 3], tiny["prompts"])

    backend.load_weights(base)  # back to the checkpoint
    assert base_texts(backend, prompts) == before

    # The check above could fail: without the prefix-cache reset, the long prompts would be
    # answered from KV computed with the previous weights.
    monkeypatch.setattr(backend.llm, "reset_prefix_cache", lambda *a, **k: True)
    backend.load_weights(new)
    stale = base_texts(backend, tiny["long_prompts"])
    monkeypatch.undo()
    backend.llm.reset_prefix_cache()
    assert stale != after[-len(stale):]
    backend.load_weights(base)
    assert base_texts(backend, prompts) == before


def test_weight_routes_leave_the_engine_its_own_copy(backend, hf, tiny, monkeypatch):
    """Every route of weight_transport.py (same process, shared memory, bytes) sets the same
    weights, and the engine keeps copies: scribbling on what was sent changes nothing."""
    base = base_weights(tiny, backend.targets)
    gen = torch.Generator().manual_seed(2)
    new = {n: w + 0.05 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
    prompts = tiny["prompts"]
    _, before = reference(hf, tiny, {}, prompts)
    _, after = reference(hf, tiny, new, prompts)
    assert before != after
    assert backend._worker_in_process  # CPU: vLLM's engine core runs in this process
    for route in ("local", "shm", "bytes"):
        monkeypatch.setattr(backend, "_worker_in_process", route == "local")
        monkeypatch.setattr(backend, "weights_via_shm", route == "shm")
        sent = {n: w.clone() for n, w in new.items()}
        backend.load_weights(sent)
        for w in sent.values():
            w.zero_()
        assert base_texts(backend, prompts) == after, route
        backend.load_weights(base)
        assert base_texts(backend, prompts) == before, route


def test_wire_carries_bf16_exactly():
    from eggroll_rl.backends.weight_transport import decode, encode, from_shared_memory, to_shared_memory

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=gen), "b": torch.randn(7, generator=gen)}
    for dtype in (torch.bfloat16, torch.float32):
        expected = {n: t.to(dtype) for n, t in tensors.items()}
        for n, t in tensors.items():
            name, got = decode(encode(n, t, dtype))
            assert name == n and got.dtype == dtype and torch.equal(got, expected[n])
        block, slots = to_shared_memory(tensors, dtype)
        try:
            assert slots[0][1] == str(dtype).removeprefix("torch.")
            with from_shared_memory(block.name, slots) as views:
                assert all(torch.equal(t, expected[n]) for n, t in views)
        finally:
            block.close()
            block.unlink()


def test_token_ids_and_clipped_agree_with_the_torch_backend(backend, tiny):
    """completions/* metrics mean the same on both backends: the same generated ids, and
    clipped exactly for rows cut at max_new_tokens (not those ended by a stop string)."""
    from eggroll_rl.backends.torch_backend import TorchBackend

    probe = backend.generate(tiny["prompts"], GREEDY).texts[0]
    # A character one row generates mid-way: that row stops early, the others run to the limit.
    stop = next(c for row in probe for c in row[0][3:] if c.isprintable() and not c.isspace() and c != "\ufffd")
    gen = GenerationConfig(max_new_tokens=GREEDY.max_new_tokens, temperature=0.0, stop=[stop])
    got = backend.generate(tiny["prompts"], gen)
    want = TorchBackend(tiny["dir"], backend.targets).generate(tiny["prompts"], gen)
    assert got.token_ids == want.token_ids
    assert got.clipped == want.clipped
    flat = [c for row in got.clipped[0] for c in row]
    assert True in flat and False in flat, flat
    assert got.new_tokens == sum(got.lengths())


def test_targets_vllm_cannot_perturb_are_reported(backend):
    ok = [("model.layers.0.self_attn.o_proj.weight", (64, 64))]
    assert backend._rpc("eggroll_check_targets", ok, 2) == []
    for bad in [("model.embed_tokens.weight", (259, 64)), ("lm_head.weight", (259, 64)),
                ("model.layers.0.self_attn.nope_proj.weight", (64, 64))]:
        problems = backend._rpc("eggroll_check_targets", ok + [bad], 2)
        assert problems, f"{bad[0]} was accepted"
    # Only the targets' layers carry LoRA wrappers: none on the embedding or the logits.
    assert "embed_tokens" not in backend.engine_kwargs["lora_target_modules"]
    for module in ("model.embed_tokens", "lm_head"):
        problem, = backend._rpc("eggroll_check_targets", [(module + ".weight", (259, 64))], 2)
        assert "no LoRA-capable vLLM module" in problem, problem
    assert backend._rpc("eggroll_list") == []


# -- (c) population larger than max_loras; subset targets -------------------------------------


def test_population_larger_than_max_loras_and_subset_targets(tiny, hf):
    from eggroll_rl.backends.vllm_backend import VLLMBackend

    targets = select_targets(tiny["shapes"], SUBSET_TARGETS)
    assert not any("k_proj" in t or "gate_proj" in t for t in targets)
    base = base_weights(tiny, targets)
    noise = NoiseSpec(seed=9, step=4, sigma=0.15, rank=1)
    with VLLMBackend(tiny["dir"], targets, rank=1, population=8, engine_options={**ENGINE, "max_loras": 2}) as be:
        assert be.population_products  # slots swapped through vllm_population.py's views
        assert be.engine_kwargs["max_loras"] == 2 and be.engine_kwargs["max_cpu_loras"] >= 8
        assert be.engine_kwargs["max_lora_rank"] == 1
        roll = assert_members_match(be, hf, tiny, base, noise, list(range(8)), tiny["prompts"][:3])
        assert len({tuple(r[0] for r in rows) for rows in roll.texts}) >= 6

        # Reload a subset: k_proj / gate_proj come from the checkpoint to complete fused groups.
        gen = torch.Generator().manual_seed(1)
        new = {n: w + 0.05 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
        be.load_weights(new)
        _, after = reference(hf, tiny, new, tiny["prompts"][:3])
        assert base_texts(be, tiny["prompts"][:3]) == after
        assert_members_match(be, hf, tiny, new, noise, [6, 7], tiny["prompts"][:3])
    assert be._llm is None


# -- prompts with a common start: KV blocks the prefix cache shares ----------------------------


def test_a_common_start_is_shared_within_each_member_only(tiny, hf):
    """make_backend sizes KV blocks on CPU so that the prompts' common start fills whole blocks
    (vLLM's default of 128 tokens is longer than most); a member's prompts then reuse its own
    cached blocks of that start, never another member's or the base model's."""
    from eggroll_rl.backends import make_backend
    from eggroll_rl.backends.vllm_engine import CPU_BLOCK_SIZE, cpu_block_size
    from eggroll_rl.config import from_dict
    from eggroll_rl.data import PromptLengths

    start = "Answer in one word, and think it over first. "
    prompts = [tiny["tok"].apply_chat_template([{"role": "user", "content": start + q}], add_generation_prompt=True,
                                               return_dict=False) for q in QUESTIONS]
    lengths = PromptLengths.of(prompts)
    assert 32 <= lengths.shared_prefix < CPU_BLOCK_SIZE  # blocks of 128 would share none of it
    cfg = from_dict({"model": str(tiny["dir"]), "backend": "vllm", "dtype": "float32", "data": {"path": "unused"},
                     "es": {"population": 4, "rank": 2}, "vllm": ENGINE})
    targets = select_targets(tiny["shapes"], ALL_TARGETS)
    base = base_weights(tiny, targets)
    with make_backend(cfg, tiny["dir"], targets, prompt_lengths=lengths) as be:
        assert be.engine_kwargs["block_size"] == cpu_block_size(lengths.shared_prefix) < CPU_BLOCK_SIZE
        assert base_texts(be, prompts) == reference(hf, tiny, {}, prompts)[1]  # the start's blocks now cached
        noise = NoiseSpec(seed=2, step=0, sigma=0.1, rank=2)
        roll = assert_members_match(be, hf, tiny, base, noise, [0, 1, 2, 3], prompts)
        assert len({tuple(r[0] for r in rows) for rows in roll.texts}) >= 3, "members alike: the test proves nothing"


# -- (e) version check ------------------------------------------------------------------------


def test_unsupported_vllm_version_is_one_line_error(monkeypatch, tiny):
    import vllm

    from eggroll_rl.backends import vllm_engine as vb
    from eggroll_rl.backends.vllm_backend import VLLMBackend

    assert vb.check_vllm_version() == vllm.__version__
    assert vb.check_vllm_version("0.32.3") == "0.32.3"
    for bad in ("0.29.1", "0.33.0", "1.0.0"):
        with pytest.raises(vb.VLLMVersionError) as err:
            vb.check_vllm_version(bad)
        msg = str(err.value)
        assert "\n" not in msg and bad in msg and vb.SUPPORTED_VLLM in msg
    monkeypatch.setattr(vllm, "__version__", "0.20.0")
    with pytest.raises(vb.VLLMVersionError, match=r"0\.20\.0"):
        VLLMBackend(tiny["dir"], ["model.layers.0.self_attn.o_proj.weight"], rank=1, population=2)
    assert vb.vllm_lora_rank(1) == 1 and vb.vllm_lora_rank(2) == 8 and vb.vllm_lora_rank(17) == 32
    with pytest.raises(ValueError):
        vb.vllm_lora_rank(1000)


