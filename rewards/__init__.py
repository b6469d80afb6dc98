"""Reward functions for eggroll-rl: ``(completions, **dataset_columns) -> list[float | None]``.

Rewards are looked up by name (:func:`get_reward`: ``math_accuracy``, ``task_accuracy``,
``digit_match``, ``format``, ``digit_fraction``, or any ``module.path:function``) and mixed with :func:`combine_rewards`.
math-verify is imported lazily, in the grading worker, so ``import eggroll_rl.rewards`` stays fast.
"""

from .answers import extract_final_answer, gold_answer
from .format_reward import digit_fraction, format_reward
from .math_reward import math_accuracy
from .registry import CombinedReward, combine_rewards, get_reward, register, registered

__all__ = [
    "CombinedReward",
    "combine_rewards",
    "digit_fraction",
    "extract_final_answer",
    "format_reward",
    "get_reward",
    "gold_answer",
    "math_accuracy",
    "register",
    "registered",
]
