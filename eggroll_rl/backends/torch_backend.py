"""The pure-PyTorch population backend: the reference every other backend is tested against.

All (member, prompt, sample) rows run as batched Hugging Face generations. A forward hook on every
perturbed linear adds each row's low-rank term to the layer's output:

    y = x·Wᵀ (+ b)  +  s·σ/√r · (x·B)·Aᵀ        (s = ±1, A/B the row's member-pair factors)

so W + E is never materialised per member: the base weights stay shared by the whole population.
Rows are member-major, so a batch is a run of segments (a mirrored pair's rows, or one member's)
of equal length; the hook multiplies each segment's rows by its pair's factors in one batched
product, (S, rows·tokens, in) @ (S, in, r), and the two members of a pair differ only in the sign
of each row. The factors sit in fixed buffers, one per batch shape, refilled per batch.

On a GPU, generation uses transformers' static KV cache and its compiled decode step (CUDA graphs,
`generation.compile`); the buffers keep their addresses, so the graphs replay batch after batch.
Batches are sized from free GPU memory (`generation.max_batch_rows: 0`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..config import ConfigError, GenerationConfig
from ..data import PromptLengths
from ..machine import resolve_device
from ..noise import NoiseSpec
from .base import Backend, Rollout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

GB = 1e9
# Of the GPU memory free once the weights are in, the share that batches of rows may take: the
# rest absorbs what the estimate leaves out (the allocator's rounding, CUDA graph pools).
BATCH_MEMORY_SHARE = 0.7


class ModelDoesNotFitError(ConfigError):
    """The model's weights alone exceed the GPU's free memory (one line: what would fit)."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the earliest stop string (vLLM's semantics: the stop string is excluded)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def row_bytes(config, dtype: torch.dtype, prompt_tokens: int, new_tokens: int) -> int:
    """GPU bytes one row of a batch needs, from a model's config: its KV cache for every position
    and the prefill's widest activations (the MLP's, attention's scores, and the hidden states)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    size = torch.finfo(dtype).bits // 8
    positions = prompt_tokens + new_tokens
    kv = 2 * text.num_hidden_layers * kv_heads * head_dim * positions * size
    activations = prompt_tokens * (4 * text.hidden_size + 3 * text.intermediate_size) * size
    scores = heads * prompt_tokens * positions * 4
    logits = 3 * text.vocab_size * 4  # the last position's logits, fp32, and the sampler's copies
    return kv + activations + scores + logits


def weights_fit_or_raise(model: str, weight_bytes: int, free_bytes: int, dtype: str, min_batch_bytes: int) -> None:
    """Raise ModelDoesNotFitError, naming what would fit, if the weights plus one row's batch
    memory exceed the GPU's free memory."""
    if weight_bytes + min_batch_bytes <= free_bytes:
        return
    per_param = torch.finfo(DTYPES[dtype]).bits // 8
    largest = max(0, free_bytes - min_batch_bytes) / per_param
    raise ModelDoesNotFitError(
        f"model {model}: {weight_bytes / GB:.1f} GB of weights in {dtype} do not fit in the GPU's "
        f"{free_bytes / GB:.1f} GB free; up to about {largest / 1e9:.1f}B parameters fit in {dtype}"
        + ("; dtype=bfloat16 halves the weights" if dtype == "float32" else "; use a smaller model or a larger GPU")
    )


class _StopStrings(StoppingCriteria):
    """vLLM's stop rule in transformers' generate: a row ends after the first token with which its
    text (special tokens skipped) contains a stop string. transformers' own ``stop_strings`` match
    the vocabulary's token strings, special tokens included, so a generated special token such as
    ``<|im_start|>`` could end a row whose text has no stop string. `lengths[row]`: how many
    tokens the row had generated when it stopped (None while it has not)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int, rows: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, [s for s in stop if s], prompt_width
        self.lengths: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_width :]
        for r, text in enumerate(self.tokenizer.batch_decode(new, skip_special_tokens=True)):
            if self.lengths[r] is None and any(s in text for s in self.stop):
                self.lengths[r] = new.shape[1]
        return torch.tensor([n is not None for n in self.lengths], device=input_ids.device)


@dataclass
class _Batch:
    """Rows [start, stop) of a call: `segments` runs of equal length, each of one pair's factors."""

    start: int
    stop: int
    pairs: list[int]  # the pair whose factors each segment uses
    signs: list[float]  # ±1 per row


def plan_batches(members: Sequence[int], rows_per_member: int, max_rows: int) -> list[_Batch]:
    """Split member-major rows into batches of at most `max_rows` rows made of whole segments.

    A segment is a mirrored pair's 2·rows_per_member rows when `members` lists whole pairs in
    order (2k, 2k+1, ...), else one member's rows. A segment longer than `max_rows` is cut into
    batches of one piece each."""
    members = list(members)
    paired = len(members) % 2 == 0 and all(
        members[i] % 2 == 0 and members[i + 1] == members[i] + 1 for i in range(0, len(members), 2))
    per_segment = 2 if paired else 1
    segment_rows = per_segment * rows_per_member
    segments = []  # (first row, pair, signs of its rows)
    for i in range(0, len(members), per_segment):
        signs = [float(1 - 2 * (m % 2)) for m in members[i : i + per_segment] for _ in range(rows_per_member)]
        segments.append((i * rows_per_member, members[i] // 2, signs))
    batches = []
    if segment_rows <= max_rows:
        per_batch = max_rows // segment_rows
        for i in range(0, len(segments), per_batch):
            group = segments[i : i + per_batch]
            batches.append(_Batch(group[0][0], group[-1][0] + segment_rows, [g[1] for g in group],
                                  [s for g in group for s in g[2]]))
    else:
        for first, pair, signs in segments:
            for lo in range(0, segment_rows, max_rows):
                piece = signs[lo : lo + max_rows]
                batches.append(_Batch(first + lo, first + lo + len(piece), [pair], piece))
    return batches


class _FactorBuffers:
    """Fixed buffers of one batch shape (S segments of L rows): per target, the segments' factors
    Aᵀ (S, r, out) and B (S, in, r) in the model's dtype, and each row's sign·σ/√r (S, L, 1, 1)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], segments: int, rows: int, rank: int, dtype, device, static: bool):
        self.factors = {name: (torch.empty(segments, rank, out, dtype=dtype, device=device),
                               torch.empty(segments, inp, rank, dtype=dtype, device=device))
                        for name, (out, inp) in shapes.items()}
        self.signs = torch.empty(segments, rows, 1, 1, dtype=dtype, device=device)
        if static:  # CUDA graphs read them in place: their addresses must never change
            for t in [self.signs, *(x for pair in self.factors.values() for x in pair)]:
                torch._dynamo.mark_static_address(t)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir, targets: list[str], dtype: str = "float32", device: str = "auto",
                 compile: bool | str = "auto", prompt_lengths: PromptLengths = PromptLengths()):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from ..params import checkpoint_shapes

        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        self.config = AutoConfig.from_pretrained(model_dir)
        if self.device.type == "cuda":  # before loading anything: a model that cannot fit stops here
            weight_bytes = sum(math.prod(s) for s in checkpoint_shapes(model_dir).values()) * (torch.finfo(self.dtype).bits // 8)
            free, _ = torch.cuda.mem_get_info(self.device)
            weights_fit_or_raise(str(model_dir), weight_bytes, free, dtype,
                                 row_bytes(self.config, self.dtype, max(prompt_lengths.longest, 1), 1))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        self.params = dict(self.model.named_parameters())
        missing = [t for t in targets if t not in self.params]
        if missing:
            raise KeyError(f"model has no parameters named {missing[:3]}")
        self.targets = list(targets)
        self.shapes = {name: tuple(self.params[name].shape) for name in self.targets}
        # Static KV cache and compiled decode: on a GPU by default; True compiles on a CPU too.
        self.compiled = compile is True or (compile == "auto" and self.device.type == "cuda")
        self.prompt_lengths = prompt_lengths
        self._caches: dict[tuple[int, int], object] = {}  # (rows, positions) -> StaticCache
        self._cache_bytes: dict[tuple[int, int], int] = {}  # what row_bytes says each one takes
        self._max_rows: dict[tuple[int, int], int] = {}  # (prompt positions, new tokens) -> rows per batch
        self._buffers: dict[tuple[int, int, int], _FactorBuffers] = {}  # (segments, rows, rank)
        self._active: _FactorBuffers | None = None  # the batch in flight; None: unperturbed rows
        modules = dict(self.model.named_modules())
        for name in self.targets:
            modules[name.removesuffix(".weight")].register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            buffers = self._active
            if buffers is None:
                return output
            a_t, b = buffers.factors[name]  # (S, r, out), (S, in, r)
            signs = buffers.signs  # (S, L, 1, 1): s·σ/√r of each row
            segments, rows = signs.shape[0], signs.shape[1]
            x = inputs[0].reshape(segments, -1, inputs[0].shape[-1])  # (S, L·T, in)
            xb = torch.bmm(x, b).view(segments, rows, -1, b.shape[-1]) * signs  # (S, L, T, r)
            out = output.view(segments, -1, output.shape[-1])
            return torch.baddbmm(out, xb.view(segments, -1, b.shape[-1]), a_t).view_as(output)

        return hook

    def _pair_factors(self, noise: NoiseSpec, pairs: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{target: (Aᵀ (P, r, out), B (P, in, r))} of `pairs` in the model's dtype, on its device."""
        return {name: (a.transpose(1, 2).to(self.dtype), b.to(self.dtype))
                for name, a, b in noise.draw(pairs, self.shapes, self.device)}

    def _fill(self, batch: _Batch, factors, pair_index: dict[int, int], scale: float) -> _FactorBuffers:
        segments, rows = len(batch.pairs), (batch.stop - batch.start) // len(batch.pairs)
        rank = factors[self.targets[0]][0].shape[1]
        buffers = self._buffers.get((segments, rows, rank))
        if buffers is None:
            buffers = _FactorBuffers(self.shapes, segments, rows, rank, self.dtype, self.device,
                                     static=self.compiled and self.device.type == "cuda")
            self._buffers[segments, rows, rank] = buffers
        index = torch.tensor([pair_index[k] for k in batch.pairs], device=self.device)
        for name, (a_t, b) in factors.items():
            buf_a, buf_b = buffers.factors[name]
            torch.index_select(a_t, 0, index, out=buf_a)
            torch.index_select(b, 0, index, out=buf_b)
        signs = torch.tensor(batch.signs, dtype=torch.float32).mul_(scale).view(segments, rows, 1, 1)
        buffers.signs.copy_(signs)
        return buffers

    def max_rows(self, gen: GenerationConfig, prompt_width: int) -> int:
        """Rows per batch: generation.max_batch_rows, or (0) all rows on a CPU and, on a GPU, as
        many as BATCH_MEMORY_SHARE of the memory free before the first batch holds. Decided once
        per (prompt positions, new tokens): batches of one size reuse one cache and one graph."""
        if gen.max_batch_rows or self.device.type != "cuda":
            return gen.max_batch_rows or 1 << 62
        positions = max(prompt_width, self.prompt_lengths.longest)
        key = (positions, gen.max_new_tokens)
        if key not in self._max_rows:
            free, _ = torch.cuda.mem_get_info(self.device)
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            free += sum(self._cache_bytes.values())  # caches that would make room for it
            self._max_rows[key] = max(1, int(free * BATCH_MEMORY_SHARE) // row_bytes(self.config, self.dtype, positions, gen.max_new_tokens))
        return self._max_rows[key]

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        gen: GenerationConfig,
        noise: NoiseSpec | None = None,
        members: Sequence[int] = (),
        seed: int = 0,
    ) -> Rollout:
        start = time.perf_counter()
        member_list = list(members) if noise is not None else [0]
        if not prompt_ids or not member_list:
            return Rollout.empty(len(member_list))
        samples = gen.samples_per_prompt
        prompts = [prompt_ids[p] for _ in member_list for p in range(len(prompt_ids)) for _ in range(samples)]
        width = max(map(len, prompt_ids), default=0)
        batches = plan_batches(member_list, len(prompt_ids) * samples, self.max_rows(gen, width))
        texts: list[str] = []
        ids: list[list[int]] = []
        clipped: list[bool] = []
        setup = 0.0
        factors = pair_index = None
        if noise is not None:
            t = time.perf_counter()
            pairs = sorted({m // 2 for m in member_list})
            pair_index = {k: i for i, k in enumerate(pairs)}
            factors = self._pair_factors(noise, pairs)
            setup += self._synced_seconds(t)
        torch.manual_seed(seed)
        for batch in batches:
            if noise is not None:
                t = time.perf_counter()
                self._active = self._fill(batch, factors, pair_index, noise.scale)
                setup += self._synced_seconds(t)
            try:
                out_texts, out_ids, out_clipped = self._generate_rows(prompts[batch.start : batch.stop], gen)
            finally:
                self._active = None
            texts += out_texts
            ids += out_ids
            clipped += out_clipped

        def nest(flat: list) -> list:
            per_prompt = [flat[i : i + samples] for i in range(0, len(flat), samples)]
            return [per_prompt[i : i + len(prompt_ids)] for i in range(0, len(per_prompt), len(prompt_ids))]

        return Rollout(texts=nest(texts), new_tokens=sum(map(len, ids)), seconds=time.perf_counter() - start,
                       setup_seconds=setup, token_ids=nest(ids), clipped=nest(clipped))

    def _synced_seconds(self, since: float) -> float:
        """Seconds since `since`, once the GPU has finished what was queued (honest timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since

    def _static_cache(self, rows: int, width: int, gen: GenerationConfig):
        """One StaticCache per (rows, positions), reused call after call: a compiled decode step
        (and its CUDA graph) is specific to the cache's shape and addresses. Its length covers the
        longest prompt the engine was told of (train and eval), so a run's batches share one. A
        new one whose memory, beside the others', would exceed the largest batch's replaces them."""
        from transformers import StaticCache

        positions = max(width, self.prompt_lengths.longest)
        key = (rows, positions + gen.max_new_tokens)
        cache = self._caches.get(key)
        if cache is not None:
            cache.reset()
            return cache
        size = rows * row_bytes(self.config, self.dtype, positions, gen.max_new_tokens)
        budget = self.max_rows(gen, width) * size // rows
        if self.device.type == "cuda" and sum(self._cache_bytes.values()) + size > budget:
            self._caches.clear()
            self._cache_bytes.clear()
            torch.cuda.empty_cache()
        self._caches[key] = StaticCache(config=self.config, max_cache_len=key[1])
        self._cache_bytes[key] = size
        return self._caches[key]

    def _generate_rows(self, prompts: list[list[int]], gen: GenerationConfig) -> tuple[list[str], list[list[int]], list[bool]]:
        """(texts, generated ids up to EOS, cut at max_new_tokens) of one batch of rows."""
        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sampling = gen.temperature > 0
        kwargs = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=sampling,
            pad_token_id=pad,
            eos_token_id=self.model.generation_config.eos_token_id or tok.eos_token_id,
        )
        if sampling:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        stop = _StopStrings(tok, gen.stop, width, len(prompts)) if gen.stop else None
        if stop is not None:
            kwargs.update(stopping_criteria=StoppingCriteriaList([stop]))
        if gen.ignore_eos:
            kwargs.update(min_new_tokens=gen.max_new_tokens)
        if self.compiled:
            from transformers import CompileConfig

            compile_config = CompileConfig()
            compile_config._compile_all_devices = True  # transformers compiles on GPUs only, else
            kwargs.update(past_key_values=self._static_cache(len(prompts), width, gen),
                          compile_config=compile_config)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)[:, width:]
        eos = kwargs["eos_token_id"]
        eos_ids = set() if gen.ignore_eos else set(eos if isinstance(eos, list) else [eos])
        texts, ids, clipped = [], [], []
        for r, row in enumerate(out.tolist()):
            # A row ends at its EOS or its stop string; what follows is padding.
            at_eos = next((i + 1 for i, t in enumerate(row) if t in eos_ids), None)
            at_stop = stop.lengths[r] if stop is not None else None
            n = min(x for x in (at_eos, at_stop, len(row)) if x is not None)
            generated = row[:n]
            ids.append(generated)
            clipped.append(n == gen.max_new_tokens and n not in (at_eos, at_stop))
            texts.append(truncate_at_stop(tok.decode(generated, skip_special_tokens=True), gen.stop))
        return texts, ids, clipped

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for name, value in weights.items():
            param = self.params[name]
            if param.data_ptr() != value.data_ptr():
                param.copy_(value)  # casts on the way: a device-to-device copy when the master is there
