"""A run's metrics.jsonl read back: one record per step, for `rlft plot` and `rlft runs`.

JsonlSink writes one flat `StepMetrics.flat()` line per step and, on a resume,
drops the lines of the steps it will redo. Should a file still hold a step
twice (lines appended by another writer, a file merged by hand), the last line
of the step wins, as it does for the resumed run. Lines that are not JSON
objects with a `step` (a torn last line after kill -9) are skipped and counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
STAGE_PREFIX = "time/"
STEP_WALL = "time/step"  # a step's wall time, where logged; stages may overlap within it
REWARD_PREFIX = "reward/"
REWARD_SUMMARY = ("reward/mean", "reward/std")


@dataclass(frozen=True)
class MetricsHistory:
    """The numeric figures of each step, ascending by step."""

    records: tuple[dict[str, float], ...]
    skipped_lines: tuple[int, ...] = ()  # 1-based line numbers that were not a step record

    @property
    def steps(self) -> list[int]:
        return [int(r["step"]) for r in self.records]

    def has(self, key: str) -> bool:
        return any(key in r for r in self.records)

    def series(self, key: str) -> list[float]:
        """`key` per step, NaN where a step did not log it (matplotlib leaves a gap).

        >>> MetricsHistory(({"step": 0, "kl": 0.5}, {"step": 1})).series("kl")
        [0.5, nan]
        """
        return [float(r.get(key, math.nan)) for r in self.records]

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, in first-logged order.

        >>> MetricsHistory(({"step": 0, "time/rollout": 1.0, "time/update": 2.0},)).keys("time/")
        ['time/rollout', 'time/update']
        """
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update((k, None) for k in r if k.startswith(prefix))
        return list(seen)

    def stages(self) -> list[str]:
        """The `time/<stage>` keys, without the step's wall time."""
        return [k for k in self.keys(STAGE_PREFIX) if k != STEP_WALL]

    def reward_components(self, terms: Sequence[str] | None = None) -> list[str]:
        """`reward/<term>` and `reward/<term>/<part>` keys. With the run's term labels
        (`term_labels` of reward.terms) only those: other figures share the prefix
        (e.g. reward/flat_groups); without, every reward/ key but mean and std.

        >>> h = MetricsHistory(({"step": 0, "reward/mean": 1, "reward/acc": 1,
        ...                      "reward/acc/part": 1, "reward/flat_groups": 0},))
        >>> h.reward_components(["acc"])
        ['reward/acc', 'reward/acc/part']
        """
        keys = [k for k in self.keys(REWARD_PREFIX) if k not in REWARD_SUMMARY]
        if terms is None:
            return keys
        return [k for k in keys if k.removeprefix(REWARD_PREFIX).split("/")[0] in set(terms)]

    def step_seconds(self) -> float:
        """Every step's wall time (its stage times summed where no wall time was
        logged), added up; startup and shutdown are not in it.

        >>> MetricsHistory(({"step": 0, "time/a": 1.0, "time/b": 2.0},
        ...                 {"step": 1, "time/a": 1.0, "time/step": 1.5})).step_seconds()
        4.5
        """
        total = 0.0
        for r in self.records:
            wall = r.get(STEP_WALL, math.nan)
            total += wall if math.isfinite(wall) else sum(
                v for k, v in r.items() if k.startswith(STAGE_PREFIX) and math.isfinite(v))
        return total


def read_metrics(path: Path) -> MetricsHistory:
    """Parse a metrics.jsonl; the newest line of a step wins (see the module doc).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text('{"step": 0, "kl": 1}\\n{"step": 1, "kl": 2}\\n{"step": 1, "kl": 3}\\n{"st')
    >>> h = read_metrics(p)
    >>> h.steps, h.series("kl"), h.skipped_lines
    ([0, 1], [1.0, 3.0], (4,))
    """
    by_step: dict[int, dict[str, float]] = {}
    skipped = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        record = _record(line)
        if record is None:
            if line.strip():
                skipped.append(n)
            continue
        by_step[int(record["step"])] = record
    return MetricsHistory(tuple(by_step[s] for s in sorted(by_step)), tuple(skipped))


def _record(line: str) -> dict[str, float] | None:
    """The numeric fields of one line, or None when it is no step record."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or not _number(raw.get("step")):
        return None
    return {k: float(v) for k, v in raw.items() if _number(v)}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
