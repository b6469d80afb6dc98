"""The training progress bar: step, mean reward, eval accuracy, tokens/s.

With ``train.time_budget_minutes`` the run ends when its minutes of training run out, not at
``train.steps``: the bar then measures those minutes (``5:13/15:00``) and counts steps beside them.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total_steps: int, completed_steps: int = 0, console: Console | None = None,
                 budget_seconds: float = 0.0, trained_seconds: float = 0.0):
        self.budget_seconds = budget_seconds
        if budget_seconds:
            amount = [TextColumn("{task.fields[minutes]}"), TextColumn("step {task.fields[step]}")]
            total, completed = budget_seconds, min(trained_seconds, budget_seconds)
        else:
            amount = [MofNCompleteColumn()]
            total, completed = total_steps, completed_steps
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            *amount,
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("eval {task.fields[eval]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, reward="-", eval="-", tps="-",
                                           step=completed_steps, minutes=self._minutes(completed))

    def _minutes(self, seconds: float) -> str:
        def clock(s: float) -> str:
            return f"{int(s // 60)}:{int(s % 60):02d}"

        return f"{clock(seconds)}/{clock(self.budget_seconds)}"

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, record: dict | None = None, eval: dict | None = None) -> None:
        fields = {}
        if record is not None:
            fields.update(reward=f"{record['reward']:.3f}", tps=f"{record['tokens_per_s']:.0f}")
            if self.budget_seconds:
                task = self.progress.tasks[0]
                done = min(task.completed + float(record.get("time/step", 0.0)), self.budget_seconds)
                fields.update(completed=done, step=record["step"], minutes=self._minutes(done))
            else:
                fields["advance"] = 1
        if eval is not None:
            fields["eval"] = f"{eval['accuracy']:.3f}"
        self.progress.update(self.task, **fields)
