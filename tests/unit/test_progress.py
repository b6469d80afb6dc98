import io

from rich.console import Console

from eggroll_rl.progress import TrainProgress


def render(progress: TrainProgress) -> str:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    console.print(progress.progress.get_renderable())
    return console.file.getvalue()


def test_steps_bar_counts_steps():
    bar = TrainProgress(30, 10)
    bar.update(record={"step": 11, "reward": 0.25, "tokens_per_s": 400.0, "time/step": 14.0})
    out = render(bar)
    assert "11/30" in out and "reward 0.250" in out


def test_time_budget_bar_measures_minutes_of_training_not_the_step_cap():
    # A resumed run with 5 minutes already trained, a 15-minute budget and a step cap of 1000.
    bar = TrainProgress(1000, 20, budget_seconds=900.0, trained_seconds=300.0)
    assert "5:00/15:00" in render(bar) and "/1000" not in render(bar)
    bar.update(record={"step": 21, "reward": 0.5, "tokens_per_s": 400.0, "time/step": 75.0})
    out = render(bar)
    assert "6:15/15:00" in out and "step 21" in out
    bar.update(record={"step": 22, "reward": 0.5, "tokens_per_s": 400.0, "time/step": 9999.0})
    assert "15:00/15:00" in render(bar)  # the last step may overshoot the budget; the bar stops full
