"""Evaluation: the same generation and grading path as training, on a model's base weights.

Greedy accuracy is the recipe's first reward averaged over held-out prompts (a sample counts
as correct when that reward is 1). With k samples per prompt it also reports pass@k (unbiased
estimator) and maj@k (the majority final answer, graded). Training's periodic evals and
`eggroll-rl eval` both call :func:`evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import IO, Any

from .backends import Backend
from .config import DataConfig, GenerationConfig
from .metrics import majority_vote, mean_ci, pass_at_k
from .rewards import CombinedReward, extract_final_answer
from .scoring import Scores, missing_as_none, score_rollout


@dataclass
class EvalResult:
    scores: Scores  # (1, prompts, samples)
    rows: list[dict[str, Any]]
    primary: str  # name of the reward reported as "accuracy" (the recipe's first reward)
    tokens_per_s: float

    @property
    def correct(self) -> list[list[bool]]:
        """correct[prompt][sample]: the primary reward is 1."""
        values = self.scores.per_reward[self.primary][0]
        return [[bool(v >= 1.0 - 1e-9) for v in per_prompt] for per_prompt in values.tolist()]

    def per_prompt_accuracy(self) -> list[float]:
        """Mean primary reward of each prompt over its samples (NaN-free: missing = 0)."""
        values = self.scores.per_reward[self.primary][0].nan_to_num(0.0)
        return values.mean(dim=1).tolist()

    def summary(self) -> dict[str, Any]:
        per_prompt = self.per_prompt_accuracy()
        mean, low, high = mean_ci(per_prompt)
        samples = len(self.correct[0]) if self.correct else 0
        out: dict[str, Any] = {
            "accuracy": mean, "ci_low": low, "ci_high": high,
            "reward_mean": float(self.scores.total.mean()),
            "n": len(self.rows), "samples": samples, "tokens_per_s": self.tokens_per_s,
        }
        if samples > 1:
            out[f"pass@{samples}"] = sum(pass_at_k(samples, sum(c), samples) for c in self.correct) / len(self.correct)
            out[f"maj@{samples}"] = self.majority_accuracy()
        out.update({f"reward/{k}": float(v.nanmean()) for k, v in self.scores.per_reward.items()})
        out["per_prompt"] = per_prompt
        return out

    def majority_accuracy(self) -> float:
        """maj@k: grade the completion carrying each prompt's most common final answer."""
        texts = self.scores.completions
        samples = len(self.correct[0])
        hits = []
        for p, correct in enumerate(self.correct):
            answers = [extract_final_answer(t) for t in texts[p * samples : (p + 1) * samples]]
            voted = majority_vote(answers)
            hits.append(float(voted is not None and correct[answers.index(voted)]))
        return sum(hits) / len(hits)

    def write_jsonl(self, f: IO[str], model: str) -> None:
        """One line per completion: the prompt, the completion, whether it counts as correct
        (:attr:`correct`, what the accuracy counts), every reward."""
        correct = self.correct
        samples = len(correct[0])
        for i, completion in enumerate(self.scores.completions):
            p, s = divmod(i, samples)
            f.write(json.dumps({
                "model": model, "index": p, "sample": s,
                "question": self.rows[p]["question"], "answer": self.rows[p]["answer"],
                "completion": completion, "correct": correct[p][s],
                "reward": float(self.scores.total[0, p, s]),
                **{k: missing_as_none(v[0, p, s]) for k, v in self.scores.per_reward.items()},
            }) + "\n")


def evaluate(backend: Backend, prompts: list[list[int]], rows: list[dict[str, Any]], gen: GenerationConfig,
             reward_fn: CombinedReward, data: DataConfig, seed: int = 0) -> EvalResult:
    """Score the engine's current base weights on `rows`: greedy when `gen.samples_per_prompt`
    is 1 (training's sampling temperature is not used for evals), else k seeded samples."""
    if gen.samples_per_prompt == 1:
        gen = dataclasses.replace(gen, temperature=0.0)
    rollout = backend.generate(prompts, gen, None, (), seed=seed)
    scores = score_rollout(rollout, rows, reward_fn, data)
    return EvalResult(
        scores=scores,
        rows=rows,
        primary=next(iter(scores.per_reward)),
        tokens_per_s=rollout.new_tokens / max(rollout.seconds, 1e-9),
    )

