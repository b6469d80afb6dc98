"""The training progress bar: step, mean reward, eval accuracy, tokens/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total: int, completed: int = 0, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("eval {task.fields[eval]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, reward="-", eval="-", tps="-")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, record: dict | None = None, eval: dict | None = None) -> None:
        fields = {}
        if record is not None:
            fields.update(reward=f"{record['reward_mean']:.3f}", tps=f"{record['tokens_per_s']:.0f}", advance=1)
        if eval is not None:
            fields["eval"] = f"{eval['accuracy']:.3f}"
        self.progress.update(self.task, **fields)
