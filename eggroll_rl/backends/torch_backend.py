"""The pure-PyTorch population backend: the reference every other backend is tested against.

All (member, prompt, sample) rows run as ONE batched Hugging Face generation. A forward hook on
every perturbed linear adds that row's low-rank term to the layer's output:

    y = x·Wᵀ (+ b)  +  s·σ/√r · (x·B)·Aᵀ        (s = ±1, A/B the row's member-pair factors)

so W + E is never materialised per member: the extra cost is two thin (in×r, r×out) products
per row, and the base weights stay shared by the whole population.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..config import GenerationConfig
from ..noise import NoiseSpec
from .base import Backend, Rollout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the earliest stop string (vLLM's semantics: the stop string is excluded)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


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


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir, targets: list[str], dtype: str = "float32", device: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        self.params = dict(self.model.named_parameters())
        missing = [t for t in targets if t not in self.params]
        if missing:
            raise KeyError(f"model has no parameters named {missing[:3]}")
        self.targets = list(targets)
        modules = dict(self.model.named_modules())
        # Per-row factors of the generation in flight: {target: ((A_rows·s·σ/√r)ᵀ, B_rows)}.
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        for name in self.targets:
            modules[name.removesuffix(".weight")].register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if self._rows is None:
                return output
            a_t, b = self._rows[name]  # (rows, r, out) with s·σ/√r folded in, (rows, in, r)
            return torch.baddbmm(output, torch.bmm(inputs[0], b), a_t)  # one fused add

        return hook

    def _row_factors(self, noise: NoiseSpec, row_members: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pairs = sorted({m // 2 for m in row_members})
        pair_pos = {k: i for i, k in enumerate(pairs)}
        index = torch.tensor([pair_pos[m // 2] for m in row_members], device=self.device)
        signs = torch.tensor([noise.member_scale(m) for m in row_members], device=self.device)
        rows = {}
        for name in self.targets:
            a, b = noise.stacked_factors(pairs, name, tuple(self.params[name].shape))
            a = a.to(self.device, self.dtype).index_select(0, index) * signs.to(self.dtype)[:, None, None]
            rows[name] = (a.transpose(1, 2).contiguous(), b.to(self.device, self.dtype).index_select(0, index))
        return rows

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
        samples = gen.samples_per_prompt
        rows = [(m, p) for m in member_list for p in range(len(prompt_ids)) for _ in range(samples)]
        chunk = gen.max_batch_rows or len(rows)
        texts: list[str] = []
        ids: list[list[int]] = []
        clipped: list[bool] = []
        new_tokens = 0
        setup = 0.0
        torch.manual_seed(seed)
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            if noise is not None:
                t = time.perf_counter()
                self._rows = self._row_factors(noise, [m for m, _ in part])
                setup += time.perf_counter() - t
            try:
                out_texts, out_ids, out_clipped = self._generate_rows([prompt_ids[p] for _, p in part], gen)
            finally:
                self._rows = None
            texts += out_texts
            ids += out_ids
            clipped += out_clipped
            new_tokens += sum(map(len, out_ids))

        def nest(flat: list) -> list:
            per_prompt = [flat[i : i + samples] for i in range(0, len(flat), samples)]
            return [per_prompt[i : i + len(prompt_ids)] for i in range(0, len(per_prompt), len(prompt_ids))]

        return Rollout(texts=nest(texts), new_tokens=new_tokens, seconds=time.perf_counter() - start,
                       setup_seconds=setup, token_ids=nest(ids), clipped=nest(clipped))

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
                param.copy_(value.to(param.device, param.dtype))
