"""What every population backend provides: generate for (member, prompt, sample) rows, take weights.

A backend holds one model in an inference engine. The trainer owns the fp32 master copy of the
perturbed matrices (named as in the Hugging Face checkpoint, e.g.
``model.layers.0.self_attn.q_proj.weight``) and pushes it back after every update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import GenerationConfig
from ..noise import NoiseSpec


@dataclass
class Rollout:
    """Completions of one generate call: texts[member][prompt][sample]."""

    texts: list[list[list[str]]]
    new_tokens: int  # generated tokens, all rows together
    seconds: float  # the whole call
    setup_seconds: float = 0.0  # of which: preparing the population (factors, adapters)
    # Generated token ids of each completion (EOS included when generated), indexed like texts,
    # and whether it was cut at max_new_tokens (no EOS, no stop string): TRL's clipped completions.
    token_ids: list[list[list[list[int]]]] | None = None
    clipped: list[list[list[bool]]] | None = None

    @classmethod
    def empty(cls, members: int) -> Rollout:
        """The rollout of a call with no prompts: every member answered nothing."""
        nothing = [[] for _ in range(members)]
        return cls(texts=nothing, new_tokens=0, seconds=0.0, token_ids=nothing, clipped=nothing)

    def lengths(self) -> list[int]:
        """Tokens of every completion, flat (member, prompt, sample order)."""
        return [len(ids) for member in self.token_ids or [] for prompt in member for ids in prompt]

    def clipped_ratio(self) -> float:
        flat = [c for member in self.clipped or [] for prompt in member for c in prompt]
        return sum(flat) / len(flat) if flat else 0.0


class Backend(ABC):
    """A model in an inference engine that can answer as any population member."""

    name: str

    @abstractmethod
    def generate(
        self,
        prompt_ids: list[list[int]],
        gen: GenerationConfig,
        noise: NoiseSpec | None = None,
        members: Sequence[int] = (),
        seed: int = 0,
    ) -> Rollout:
        """Every member in `members` answers every prompt `gen.samples_per_prompt` times.

        `noise=None` means the unperturbed model (one "member"; `members` is ignored). Member m
        generates with W + E_m for every target matrix (noise.py). Text stops before the first
        stop string or at EOS; special tokens are not decoded. `seed` fixes sampling.
        """

    @abstractmethod
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Set the named target matrices (HF names, fp32) as the engine's base weights."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the engine."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
