"""`rlft plot RUN_DIR`: the run's curves as one PNG, `<run>/curves.png`.

Five panels from metrics.jsonl (rlft/run/history.py reads it): reward mean ±
std with its components (and eval reward where logged), response length,
time per stage (stacked bars, and the step's wall time as a line where the
loop logs it), KL and entropy. A figure the run did not log leaves its panel saying "not logged"
rather than vanishing, so every picture has the same layout.

The figure is a bare `matplotlib.figure.Figure` drawn by the Agg canvas: no
pyplot, so no display, no global figure state, and safe inside a training
process or a headless container.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rlft.rewards.base import RewardTerm, term_labels
from rlft.run.history import METRICS_FILE, STEP_WALL, MetricsHistory, read_metrics

CURVES_FILE = "curves.png"
MARKERS_UP_TO = 30  # steps; with fewer, points get markers so a 1-step run shows one
NOT_LOGGED = "not logged"
FEW_STEPS = 10  # up to this many steps, every step gets an x tick


class PlotError(ValueError):
    """The folder cannot be plotted; the message names the path and the fix."""


@dataclass(frozen=True)
class RunInfo:
    """What the run's config.yaml tells the picture; the curves need only metrics.jsonl."""

    name: str
    algorithm: str | None = None
    model: str | None = None
    terms: tuple[str, ...] | None = None  # reward component labels; None: no readable config


Draw = Callable[[Axes, MetricsHistory, RunInfo], None]


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    keys: tuple[str, ...]  # the panel says NOT_LOGGED when the run logged none of them
    draw: Draw
    zero_note: str = ""  # shown when every value drawn is 0 (e.g. a term that is off)


def _style(h: MetricsHistory) -> dict:
    return {"marker": "o", "markersize": 3} if len(h.records) <= MARKERS_UP_TO else {}


def _lines(*keys: str) -> Draw:
    def draw(ax: Axes, h: MetricsHistory, info: RunInfo) -> None:
        shown = [k for k in keys if h.has(k)]
        for k in shown:
            ax.plot(h.steps, h.series(k), label=k, **_style(h))
        if len(shown) > 1:
            ax.legend(fontsize="small")
    return draw


def _draw_reward(ax: Axes, h: MetricsHistory, info: RunInfo) -> None:
    mean, std = h.series("reward/mean"), h.series("reward/std")
    # zorder: on top of a component that equals it (one term of weight 1)
    ax.plot(h.steps, mean, color="black", linewidth=2, label="reward/mean", zorder=3,
            **_style(h))
    if h.has("reward/std") and len(h.records) == 1:  # a band of one point has no width
        ax.errorbar(h.steps, mean, yerr=std, color="black", capsize=4, label="± std")
    elif h.has("reward/std"):
        ax.fill_between(h.steps, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], color="black", alpha=0.12,
                        label="± std")
    for key in h.reward_components(info.terms):
        part = key.count("/") > 1  # reward/<term>/<part>: a term's own component
        ax.plot(h.steps, h.series(key), label=key, linestyle=":" if part else "-",
                linewidth=1 if part else 1.5, **_style(h))
    if h.has("eval/reward_mean"):
        steps = [s for s, v in zip(h.steps, h.series("eval/reward_mean")) if not math.isnan(v)]
        ax.plot(steps, [v for v in h.series("eval/reward_mean") if not math.isnan(v)], "D",
                color="tab:red", label="eval/reward_mean")
    # Components are each term's own score; the mean weighs them by reward.terms[].weight.
    ax.legend(fontsize="small", loc="best", ncols=2, title="components: unweighted",
              title_fontsize="small")


def _draw_stages(ax: Axes, h: MetricsHistory, info: RunInfo) -> None:
    """Stacked bars per stage; the step's wall time, where logged, as a line: bars
    rise above it where stages overlapped (rollout running ahead of the learner)."""
    bottom = [0.0] * len(h.records)
    for key in h.stages():
        seconds = [0.0 if math.isnan(v) else v for v in h.series(key)]
        ax.bar(h.steps, seconds, bottom=bottom, width=0.8, label=key.removeprefix("time/"))
        bottom = [b + s for b, s in zip(bottom, seconds)]
    if h.has(STEP_WALL):
        ax.plot(h.steps, h.series(STEP_WALL), color="black", label="step wall time",
                **_style(h))
    ax.legend(fontsize="small", ncols=2)


# Order = place in the grid: the reward panel spans the top row.
PANELS = (
    Panel("reward per step: mean ± std, components", "reward",
          ("reward/mean",), _draw_reward),
    Panel("response length", "tokens (mean)", ("response_len/mean",), _lines("response_len/mean")),
    Panel("time per stage", "seconds", ("time/",), _draw_stages),
    Panel("KL to the reference", "KL", ("kl", "kl_reward/kl"), _lines("kl", "kl_reward/kl"),
          zero_note="0 at every step: no KL term (algo.kl_coef = 0)"),
    Panel("entropy", "nats per token", ("entropy",), _lines("entropy")),
)
GRID = ((0, slice(0, 2)), (1, 0), (1, 1), (2, 0), (2, 1))  # (row, column) of each panel


def _logged(panel: Panel, h: MetricsHistory) -> bool:
    return any(h.keys(k) if k.endswith("/") else h.has(k) for k in panel.keys)


def _all_zero(panel: Panel, h: MetricsHistory) -> bool:
    return all(v == 0 for k in panel.keys if h.has(k) for v in h.series(k))


def build_figure(history: MetricsHistory, info: RunInfo | None = None) -> Figure:
    """The curves figure: one Axes per entry of PANELS, in that order."""
    info = info or RunInfo(name="")
    fig = Figure(figsize=(12, 11), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=(1.3, 1, 1))
    for panel, (row, col) in zip(PANELS, GRID):
        ax = fig.add_subplot(grid[row, col])
        ax.set_title(panel.title)
        ax.set_ylabel(panel.ylabel)
        ax.set_xlabel("step")
        if len(history.records) <= FEW_STEPS:  # one tick per step (1 step: no 0.05 ticks)
            ax.set_xticks(history.steps)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(history.steps[0] - 0.5, history.steps[-1] + 0.5)
        ax.grid(alpha=0.3)
        if _logged(panel, history):
            panel.draw(ax, history, info)
            if panel.zero_note and _all_zero(panel, history):
                ax.text(0.5, 0.75, panel.zero_note, transform=ax.transAxes, ha="center",
                        color="gray")
        else:
            ax.text(0.5, 0.5, NOT_LOGGED, transform=ax.transAxes, ha="center", va="center",
                    color="gray", fontsize="large")
    fig.suptitle(run_title(info, history))
    return fig


def load_history(run_dir: Path) -> MetricsHistory:
    """The run's metrics, or PlotError naming what is missing and the fix."""
    hint = "pass a folder that `rlft train` made (`rlft runs` lists them)"
    if not run_dir.is_dir():
        raise PlotError(f"run folder {str(run_dir)!r} does not exist; {hint}")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        if not (run_dir / "config.yaml").is_file():
            raise PlotError(f"{str(run_dir)!r} is not a run folder (it has no config.yaml and "
                            f"no {METRICS_FILE}); {hint}")
        raise PlotError(f"{str(run_dir)!r} has no {METRICS_FILE}: the run has not finished a "
                        "step yet, or ran without the jsonl logger; keep 'jsonl' in "
                        "logging.loggers (the default) and plot after the first step")
    history = read_metrics(path)
    if not history.records:
        raise PlotError(f"{str(path)!r} holds no step record yet (a line is written after each "
                        "step); plot after the first step")
    return history


def run_info(run_dir: Path) -> RunInfo:
    """The run's name, algorithm, model and reward term labels from its config.yaml.
    Unreadable or partial config: the parts it has (the picture loses only its
    title and the filter that keeps non-term reward/ figures out of the reward panel)."""
    name = run_dir.resolve().name
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        terms = tuple(term_labels([RewardTerm(str(t["name"])) for t in cfg["reward"]["terms"]]))
        return RunInfo(name, str(cfg["algo"]["name"]), str(cfg["model"]["name"]), terms)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return RunInfo(name)


def run_title(info: RunInfo, history: MetricsHistory) -> str:
    """'<run> · <algo> on <model> · N steps'.

    >>> run_title(RunInfo("r", "grpo", "smollm2"), MetricsHistory(({"step": 0},)))
    'r · grpo on smollm2 · 1 step'
    """
    n = len(history.records)
    parts = [info.name, f"{info.algorithm} on {info.model}" if info.algorithm else "",
             f"{n} step{'s' * (n != 1)}"]
    return " · ".join(p for p in parts if p)


def write_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's curves PNG (default `<run_dir>/curves.png`) and return its path.

    Written to a temporary name and renamed, so a viewer never opens half a file.
    """
    run_dir = Path(run_dir)
    history = load_history(run_dir)
    out = Path(out) if out else run_dir / CURVES_FILE
    if not out.parent.is_dir():
        raise PlotError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist; "
                        "create it or pick a path in an existing folder")
    fig = build_figure(history, run_info(run_dir))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PlotError(f"cannot write {str(out)!r}: {exc.strerror or exc}; pick a writable "
                        "path with --out") from exc
    if history.skipped_lines:
        print(f"note: {METRICS_FILE} lines {list(history.skipped_lines)} are not step records "
              "and were left out (a torn last line after a crash is expected)", file=sys.stderr)
    return out


def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlft plot", description="a run's curves (reward, response "
                                "length, time per stage, KL, entropy) as a PNG")
    p.add_argument("run_dir", help="the run folder (<logging.run_dir>/<run name>)")
    p.add_argument("--out", default=None, help=f"PNG path (default RUN_DIR/{CURVES_FILE})")
    ns = p.parse_args(args)
    try:
        path = write_curves(ns.run_dir, ns.out)
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
