"""eggroll-rl: fine-tune LLMs for reasoning with EGGROLL low-rank evolution strategies.

    from eggroll_rl import train, evaluate, export   # the Python API (api.py)
"""

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "export"]


def __getattr__(name: str):
    # The API is imported on first use, so that `import eggroll_rl` (the CLI, the sandbox's and
    # vLLM's worker processes) stays light.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'eggroll_rl' has no attribute {name!r}")
