"""What the CLI prints: its consoles, one-line errors, and quiet libraries."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console

console = Console(soft_wrap=True, highlight=False)  # whole lines: paths stay copy-pasteable
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line naming the problem and the fix, then a non-zero exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def first_line(text: object) -> str:
    """The first non-blank line of a message (an exception's, a server's): what one line shows."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def quiet_libraries() -> None:
    """Our progress bar and tables are the output; keep library chatter to warnings."""
    import datasets  # heavy: imported only by commands that load models and data
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
