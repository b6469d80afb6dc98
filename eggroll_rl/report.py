"""`eggroll-rl report RUN [RUN ...]`: plots and a self-contained report.html of one or more runs.

Read from the run directories only (config.yaml, machine.json, metrics.jsonl, eval.jsonl,
samples.jsonl): training writes a run's report at the end and refreshes it after each eval.
Several runs are overlaid, one colour each, because comparing settings is the daily work. The
figures:

    reward.png       train reward per step (population mean, moving mean) and held-out accuracy
                     with its 95% interval, against steps and against wall-clock minutes
    training.png     the update's health per step: lr, sigma, update norm, fitness std, the share
                     of prompts on which every member scored the same, completion length, clipped
    time.png         seconds per step by phase (generate, reward, update, push), stacked
    throughput.png   generated tokens/s per step, and the process tree's memory (RSS, peak)

report.html embeds them (base64) with a table per run (steps, training time, first and last
eval, the settings that differ between the runs), each run's recipe in brief (model, data,
rewards, population, sigma, lr, steps, where it ran) and its last logged completions.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .config import to_dict
from .run_dir import EVALS, METRICS, SAMPLES, RunDir
from .settings import flatten
from .units import human_seconds

REPORT = "report.html"
FIGURES = ("reward.png", "training.png", "time.png", "throughput.png")
PHASES = ("time/generate", "time/reward", "time/update", "time/push")
# (metric, panel title) of training.png
HEALTH = (("learning_rate", "learning rate"), ("sigma", "sigma (perturbation scale)"), ("update_norm", "update norm ‖ΔW‖"),
          ("fitness_std", "fitness std over members"), ("frac_reward_zero_std", "share of prompts with no spread"),
          ("completions/mean_length", "completion length (tokens, mean)"), ("completions/clipped_ratio", "share cut at max_new_tokens"))
# Settings that never change what a run computes: not worth a column when runs differ in them.
NOT_SETTINGS = ("run_name", "output_dir", "report_to", "description")
SAMPLE_ROWS = 8


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


def _steps_axis(ax) -> None:
    """Whole steps only on a step axis (no tick at step 2.5)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _reward_figure(runs: dict[str, RunDir], path: Path) -> None:
    fig, (by_step, by_time, eval_step, eval_time) = _figure(2)
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i}"
        metrics, evals = run.read(METRICS), run.read(EVALS)
        steps, minutes = [m["step"] for m in metrics], _minutes(metrics)
        rewards = [m.get("reward", float("nan")) for m in metrics]
        w = max(1, len(rewards) // 10)
        smooth = [sum(rewards[max(0, j - w + 1): j + 1]) / len(rewards[max(0, j - w + 1): j + 1]) for j in range(len(rewards))]
        for ax, xs in ((by_step, steps), (by_time, minutes)):
            ax.plot(xs, rewards, color=color, alpha=0.35, lw=1, label=f"{name}, per step")
            if w > 1:
                ax.plot(xs, smooth, color=color, lw=2, label=f"{name}, mean of {w} steps")
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
        if xlabel == "step":
            _steps_axis(ax)
    fig.tight_layout()
    fig.savefig(str(path))


def _health_figure(runs: dict[str, RunDir], path: Path) -> None:
    fig, axes = _figure((len(HEALTH) + 1) // 2)
    for i, (name, run) in enumerate(runs.items()):
        metrics = run.read(METRICS)
        steps = [m["step"] for m in metrics]
        for ax, (key, _) in zip(axes, HEALTH):
            ax.plot(steps, [m.get(key, float("nan")) for m in metrics], color=f"C{i}", marker=".", label=name)
    for ax, (_, title) in zip(axes, HEALTH):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _steps_axis(ax)
    for ax in axes[len(HEALTH):]:
        ax.set_visible(False)
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
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
        ax.grid(alpha=0.3, axis="y")
        _steps_axis(ax)
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
        _steps_axis(ax)
    fig.tight_layout()
    fig.savefig(str(path))


def _summary(name: str, run: RunDir, differing: list[str]) -> list[str]:
    metrics, evals = run.read(METRICS), run.read(EVALS)
    cfg = flatten(to_dict(run.load_config()))
    first, last = (evals[0], evals[-1]) if evals else (None, None)

    def acc(e: dict | None) -> str:
        return "—" if e is None else f"{e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] at step {e['step']}"

    seconds = 60 * _minutes(metrics)[-1] if metrics else 0.0
    cells = [name, str(len(metrics)), f"{seconds:.1f} s" if seconds < 60 else human_seconds(seconds), acc(first), acc(last),
             "; ".join(f"{k}={cfg.get(k)}" for k in differing) or "—"]
    return [html.escape(c) for c in cells]


def _recipe(name: str, run: RunDir) -> str:
    """One run's recipe in brief, and where it ran (machine.json), as an HTML table."""
    cfg = run.load_config()
    es = cfg.es
    rewards = " + ".join(f"{r.weight:g}×{r.name}" for r in cfg.rewards)
    lr = f"{es.lr:g} ({es.optimizer}, {es.lr_schedule}" + (f" to ×{es.lr_final_ratio:g}" if es.lr_schedule != "constant" else "") + ")"
    rows = [("model", cfg.model), ("data", f"{cfg.data.path} ({cfg.data.eval_set} evals: {cfg.data.eval_size} rows)"),
            ("rewards", rewards), ("population", f"{es.population} members (mirrored pairs) × {es.prompts_per_step} prompts, rank {es.rank}"),
            ("sigma", f"{es.sigma:g} ({es.sigma_schedule})"), ("learning rate", lr),
            ("steps", f"{cfg.train.steps}" + (f", at most {cfg.train.time_budget_minutes:g} min" if cfg.train.time_budget_minutes else "")),
            ("generation", f"{cfg.generation.max_new_tokens} new tokens, temperature {cfg.generation.temperature:g}")]
    for m in run.machines()[-1:]:
        rows.append(("ran on", f"{m['backend']} on {m['device']}, {m['dtype']}, noise {m['noise']}; {m['cpu']}"
                               + (f", GPU {m['gpu']}" if m.get("gpu") else "")))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<h2>{html.escape(name)}: recipe</h2><table>{body}</table>"


def _samples(name: str, run: RunDir) -> str:
    """The last step's logged completions with their rewards, as an HTML table."""
    samples = run.read(SAMPLES)
    last = [s for s in samples if s.get("step") == samples[-1].get("step")][:SAMPLE_ROWS] if samples else []
    if not last:
        return ""
    rows = "".join(
        f"<tr><td>{s['step']}</td><td>{s['member']}</td><td>{html.escape(str(s['question']))}</td>"
        f"<td>{html.escape(str(s.get('answer')))}</td><td><pre>{html.escape(str(s['completion']))}</pre></td>"
        f"<td>{s['reward']:.3f}</td></tr>" for s in last)
    return (f"<h2>{html.escape(name)}: completions of step {last[0]['step']}</h2><table><tr><th>step</th><th>member</th>"
            f"<th>prompt</th><th>gold</th><th>completion</th><th>reward</th></tr>{rows}</table>")


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Figures and report.html for `run_dirs` into `out` (default: the only run's folder)."""
    runs = {Path(p).name: RunDir(p) for p in run_dirs}
    out = Path(out) if out is not None else (Path(run_dirs[0]) if len(run_dirs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: flatten(to_dict(run.load_config())) for name, run in runs.items()}
    keys = sorted(set().union(*configs.values()))
    differing = [k for k in keys if len({str(c.get(k)) for c in configs.values()}) > 1 and k not in NOT_SETTINGS]
    _reward_figure(runs, out / FIGURES[0])
    _health_figure(runs, out / FIGURES[1])
    _time_figure(runs, out / FIGURES[2])
    _throughput_figure(runs, out / FIGURES[3])
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in _summary(n, r, differing)) + "</tr>" for n, r in runs.items())
    images = "".join(f'<img alt="{f}" src="data:image/png;base64,{base64.b64encode((out / f).read_bytes()).decode()}">'
                     for f in FIGURES)
    (out / REPORT).write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>eggroll-rl report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%;display:block;margin:1em 0}th{text-align:left;background:#f4f4f4}"
        "pre{white-space:pre-wrap;margin:0;max-width:40em}</style></head><body>"
        f"<h1>eggroll-rl: {html.escape(', '.join(runs))}</h1><table><tr><th>run</th><th>steps</th><th>training time</th>"
        "<th>first eval (accuracy, 95% CI)</th><th>last eval</th><th>settings that differ</th></tr>"
        f"{rows}</table>{''.join(_recipe(n, r) for n, r in runs.items())}{images}"
        f"{''.join(_samples(n, r) for n, r in runs.items())}</body></html>\n"
    )
    return out / REPORT
