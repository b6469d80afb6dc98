"""eggroll-rl: fine-tune LLMs for reasoning with EGGROLL low-rank evolution strategies."""

__version__ = "0.1.0"
