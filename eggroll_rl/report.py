"""`eggroll-rl report RUN [RUN ...]`: plots and a self-contained report.html of one or more runs.

Read from the run directories only (metrics.jsonl, eval.jsonl, config.yaml): training writes a
run's report at the end and refreshes it after each eval. Several runs are overlaid, one colour
each, because comparing settings is the daily work. The figures:

    reward.png       train reward per step (population mean, moving mean) and held-out accuracy
                     with its 95% interval, against steps and against wall-clock minutes
    time.png         seconds per step by phase (generate, reward, update, push), stacked
    throughput.png   generated tokens/s per step, and the process tree's memory (RSS, peak)

report.html embeds them (base64) with a table per run: steps, wall-clock, first and last eval,
the settings that differ between the runs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import to_dict
from .settings import flatten
from .run_dir import EVALS, METRICS, RunDir

REPORT = "report.html"
FIGURES = ("reward.png", "time.png", "throughput.png")
PHASES = ("time/generate", "time/reward", "time/update", "time/push")


def _minutes(metrics: list[dict]) -> list[float]:
    """Wall-clock minutes at the end of each step (evals excluded: the sum of step times)."""
    total, out = 0.0, []
    for m in metrics:
        total += float(m.get("time/step", 0.0) or 0.0)
        out.append(total / 60)
    return out


def _figure(rows: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(11, 3.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 2, squeeze=False).ravel().tolist()


def _reward_figure(runs: dict[str, RunDir], path: Path) -> None:
    fig, (by_step, by_time, eval_step, eval_time) = _figure(2)
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i}"
        metrics, evals = run.read(METRICS), run.read(EVALS)
        steps, minutes = [m["step"] for m in metrics], _minutes(metrics)
        rewards = [m.get("reward", float("nan")) for m in metrics]
        for ax, xs in ((by_step, steps), (by_time, minutes)):
            ax.plot(xs, rewards, color=color, alpha=0.35, lw=1)
            w = max(1, len(rewards) // 10)
            smooth = [sum(rewards[max(0, j - w + 1): j + 1]) / len(rewards[max(0, j - w + 1): j + 1]) for j in range(len(rewards))]
            ax.plot(xs, smooth, color=color, lw=2, label=name)
        # an eval at step s happened after s steps: its wall-clock is that of step s (0 at the start)
        at = {m["step"]: t for m, t in zip(metrics, minutes)}
        ev = [e for e in evals if isinstance(e.get("accuracy"), (int, float))]
        for ax, xs in ((eval_step, [e["step"] for e in ev]), (eval_time, [at.get(e["step"], 0.0) for e in ev])):
            ax.plot(xs, [e["accuracy"] for e in ev], marker="o", color=color, label=name)
            ax.fill_between(xs, [e.get("ci_low", e["accuracy"]) for e in ev], [e.get("ci_high", e["accuracy"]) for e in ev],
                            color=color, alpha=0.15)
    for ax, title, xlabel in ((by_step, "train reward (population mean)", "step"), (by_time, "train reward", "minutes of training"),
                              (eval_step, "held-out accuracy, 95% CI", "step"), (eval_time, "held-out accuracy, 95% CI", "minutes of training")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def _time_figure(runs: dict[str, RunDir], path: Path) -> None:
    fig, axes = _figure((len(runs) + 1) // 2)
    for ax, (name, run) in zip(axes, runs.items()):
        metrics = run.read(METRICS)
        steps = [m["step"] for m in metrics]
        bottom = [0.0] * len(metrics)
        for j, phase in enumerate(PHASES):
            values = [float(m.get(phase, 0.0) or 0.0) for m in metrics]
            ax.bar(steps, values, bottom=bottom, color=f"C{j}", label=phase.split("/")[1], width=0.9)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{name}: seconds per step by phase")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(str(path))


def _throughput_figure(runs: dict[str, RunDir], path: Path) -> None:
    fig, (tokens, memory) = _figure(1)
    for i, (name, run) in enumerate(runs.items()):
        metrics = run.read(METRICS)
        steps = [m["step"] for m in metrics]
        tokens.plot(steps, [m.get("tokens_per_s", float("nan")) for m in metrics], color=f"C{i}", label=name)
        memory.plot(steps, [m.get("memory/rss_gb", float("nan")) for m in metrics], color=f"C{i}", label=f"{name} RSS")
        memory.plot(steps, [m.get("memory/peak_rss_gb", float("nan")) for m in metrics], color=f"C{i}", ls="--", label=f"{name} peak")
    for ax, title in ((tokens, "generated tokens/s"), (memory, "process tree memory (GB)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def _summary(name: str, run: RunDir, differing: list[str]) -> list[str]:
    metrics, evals = run.read(METRICS), run.read(EVALS)
    cfg = flatten(to_dict(run.load_config()))
    first, last = (evals[0], evals[-1]) if evals else (None, None)

    def acc(e: dict | None) -> str:
        return "—" if e is None else f"{e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] at step {e['step']}"

    minutes = _minutes(metrics)[-1] if metrics else 0.0
    cells = [name, str(len(metrics)), f"{minutes:.1f}", acc(first), acc(last),
             "; ".join(f"{k}={cfg.get(k)}" for k in differing) or "—"]
    return [html.escape(c) for c in cells]


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Figures and report.html for `run_dirs` into `out` (default: the only run's folder)."""
    runs = {Path(p).name: RunDir(p) for p in run_dirs}
    out = Path(out) if out is not None else (Path(run_dirs[0]) if len(run_dirs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: flatten(to_dict(run.load_config())) for name, run in runs.items()}
    keys = sorted(set().union(*configs.values()))
    differing = [k for k in keys if len({str(c.get(k)) for c in configs.values()}) > 1 and k not in ("run_name", "output_dir")]
    _reward_figure(runs, out / FIGURES[0])
    _time_figure(runs, out / FIGURES[1])
    _throughput_figure(runs, out / FIGURES[2])
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in _summary(n, r, differing)) + "</tr>" for n, r in runs.items())
    images = "".join(f'<img alt="{f}" src="data:image/png;base64,{base64.b64encode((out / f).read_bytes()).decode()}">'
                     for f in FIGURES)
    (out / REPORT).write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>eggroll-rl report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%;display:block;margin:1em 0}</style></head><body>"
        f"<h1>eggroll-rl: {html.escape(', '.join(runs))}</h1><table><tr><th>run</th><th>steps</th><th>minutes</th>"
        "<th>first eval (accuracy, 95% CI)</th><th>last eval</th><th>settings that differ</th></tr>"
        f"{rows}</table>{images}</body></html>\n"
    )
    return out / REPORT
