"""`rlft runs [DIR]`: one line per run folder under DIR (default runs/), newest first.

A run folder is a folder with a config.yaml (RunFolder.create writes it before
anything else); folders of run folders (benchmarks/compare_algos writes
`runs/compare/<time>/<algo>/`) are searched a few levels down. Each line reads
the run's config.yaml, metrics.jsonl and checkpoints/ only: no Ray, no model.

`time` is the summed stage times of the logged steps: the training itself,
without startup (Ray, model load) and without the time between a crash and
its resume, which no file records.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlft.run import checkpoint
from rlft.run.history import METRICS_FILE, MetricsHistory, read_metrics

CONFIG_FILE = "config.yaml"
WINDOW = 5  # steps averaged at each end of the reward column
MAX_DEPTH = 3  # levels below DIR searched for run folders


@dataclass(frozen=True)
class RunSummary:
    name: str  # the folder, relative to the listed DIR
    algorithm: str  # "?" where config.yaml is unreadable (see `problem`)
    steps_done: int
    steps_total: int | None  # train.steps
    reward_first: float | None  # mean reward of the first WINDOW steps (fewer if fewer ran)
    reward_last: float | None  # ... and of the last WINDOW steps
    checkpoint: str | None  # the newest complete checkpoint folder's name
    seconds: float
    modified: float  # newest change of config/metrics/checkpoint (epoch s): the sort key
    problem: str = ""


def find_runs(root: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """Folders holding a config.yaml, at most `depth` levels below `root`; a run
    folder's own subfolders (checkpoints/, logs/) are not searched."""
    if (root / CONFIG_FILE).is_file():
        return [root]
    if depth == 0:
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            found += find_runs(child, depth - 1)
    return found


def summarize(run_dir: Path, root: Path) -> RunSummary:
    cfg, problem = _config(run_dir)
    metrics = run_dir / METRICS_FILE
    history = read_metrics(metrics) if metrics.is_file() else MetricsHistory(())
    ckpt = checkpoint.latest(run_dir / "checkpoints")
    rewards = [v for v in history.series("reward/mean") if not math.isnan(v)]
    k = min(WINDOW, len(rewards))
    done = history.steps[-1] + 1 if history.records else _checkpoint_step(ckpt)
    stamps = [p.stat().st_mtime for p in (run_dir / CONFIG_FILE, metrics, ckpt) if p and p.exists()]
    return RunSummary(
        name=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        algorithm=str(cfg.get("algo", {}).get("name", "?")), steps_done=done,
        steps_total=cfg.get("train", {}).get("steps"),
        reward_first=sum(rewards[:k]) / k if k else None,
        reward_last=sum(rewards[-k:]) / k if k else None,
        checkpoint=ckpt.name if ckpt else None, seconds=history.step_seconds(),
        modified=max(stamps), problem=problem)


def _config(run_dir: Path) -> tuple[dict, str]:
    """The run's config as a dict, and why it could not be read ("" when it could)."""
    try:
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except yaml.YAMLError as exc:
        return {}, f"{CONFIG_FILE} is not valid YAML ({str(exc).splitlines()[0]})"
    if not isinstance(cfg, dict) or not isinstance(cfg.get("algo"), dict):
        return {}, f"{CONFIG_FILE} is not a run config (no algo section)"
    return cfg, ""


def _checkpoint_step(ckpt: Path | None) -> int:
    """Steps a checkpoint holds, for a run that logged no metrics.jsonl."""
    return int(ckpt.name.removeprefix("step-")) if ckpt else 0


def duration(seconds: float) -> str:
    """Compact h/m/s.

    >>> duration(42.4), duration(725), duration(3 * 3600 + 125)
    ('42s', '12m05s', '3h02m')
    """
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def table(runs: list[RunSummary]) -> str:
    """Aligned text table, in the order given."""
    head = ("run", "algo", "steps", f"reward first {WINDOW} -> last {WINDOW}", "checkpoint",
            "time", "updated")
    rows = [head] + [(
        r.name, r.algorithm,
        f"{r.steps_done}/{r.steps_total}" if r.steps_total else str(r.steps_done),
        "-" if r.reward_first is None else f"{r.reward_first:.3f} -> {r.reward_last:.3f}",
        r.checkpoint or "-", duration(r.seconds) if r.seconds else "-",
        time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified)),
    ) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlft runs", description="the run folders under DIR, "
                                "newest first: algorithm, steps, reward, checkpoint, time")
    p.add_argument("dir", nargs="?", default="runs", help="folder of run folders "
                   "(logging.run_dir; default runs)")
    ns = p.parse_args(args)
    root = Path(ns.dir)
    if not root.is_dir():
        print(f"error: {ns.dir!r} does not exist; pass the folder runs are written to "
              "(logging.run_dir, default runs/ in the folder `rlft train` ran in)", file=sys.stderr)
        return 2
    runs = sorted((summarize(d, root) for d in find_runs(root)), key=lambda r: -r.modified)
    if not runs:
        print(f"no run folders under {ns.dir!r} (a run folder holds {CONFIG_FILE}; "
              "`rlft train` makes one per run)")
        return 0
    print(table(runs))
    for r in runs:
        if r.problem:
            print(f"note: {r.name}: {r.problem}", file=sys.stderr)
    return 0
