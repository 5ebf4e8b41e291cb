"""Say when a step has nothing to learn: most groups scored alike.

A group whose samples all got the same reward has zero advantage under every
group-relative estimator (GRPO, Dr. GRPO, RLOO, ...), so it contributes no
policy gradient. When that holds for most groups, step after step, the loss
and gradient norm sit at 0 and the run silently does nothing. The figure goes
into every step's metrics (`reward/flat_groups`, `reward/flat_group_frac`);
`FlatGroupWatch`, a metric sink that `make_sinks` always adds, warns once
with the count and the remedies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rlft.types import ScoredRollouts, StepMetrics

log = logging.getLogger("rlft")

FLAT = "reward/flat_groups"
FLAT_FRAC = "reward/flat_group_frac"


def count_flat(group_id: Sequence[int], rewards: Sequence[float]) -> tuple[int, int]:
    """(groups whose samples all scored the same, groups of two or more samples).

    A group of one sample has nothing to compare with and is left out of both.

    >>> count_flat([0, 0, 1, 1, 2], [1.0, 1.0, 0.0, 1.0, 0.5])
    (1, 2)
    """
    seen: dict[int, list[float]] = {}
    for g, r in zip(group_id, rewards, strict=True):
        seen.setdefault(g, []).append(float(r))
    sized = [rs for rs in seen.values() if len(rs) > 1]
    return sum(max(rs) == min(rs) for rs in sized), len(sized)


def flat_group_metrics(scored: ScoredRollouts) -> dict[str, float]:
    """The step's figures for the metrics record (every sampled group, all rounds)."""
    flat, groups = count_flat(scored.rollouts.group_id, scored.rewards.tolist())
    return {FLAT: float(flat), FLAT_FRAC: flat / groups if groups else 0.0}


@dataclass
class FlatGroupWatch:
    """A metric sink that warns the first time most groups of a step (more than
    `threshold` of them) scored alike; silent afterwards (the figure stays in
    the metrics).

    >>> from rlft.types import StepMetrics
    >>> def step(k, flat): return StepMetrics(k, k, 0.0, 0.0, 8.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0,
    ...     {}, extra={FLAT: flat, FLAT_FRAC: flat / 8})
    >>> watch = FlatGroupWatch()
    >>> watch.message(step(0, 3)) is None
    True
    >>> print(watch.message(step(1, 7)).split(";")[0])
    step 1: 7 of 8 groups scored the same reward on every sample
    >>> watch.message(step(2, 8)) is None  # once per run
    True
    """

    threshold: float = 0.5
    warned: bool = False
    remedies: str = ""  # what applies to this run (`remedies`); default: every one


    def message(self, m: StepMetrics) -> str | None:
        frac = m.extra.get(FLAT_FRAC)
        if self.warned or frac is None or frac <= self.threshold:
            return None
        self.warned = True
        flat = int(m.extra[FLAT])
        groups = round(flat / frac)
        return (f"step {m.step}: {flat} of {groups} groups scored the same reward on every "
                f"sample; group-relative advantages are zero for them, so they give no "
                f"gradient (loss and grad norm near 0). The policy rarely produces an answer "
                f"the reward tells apart. Remedies: {self.remedies or remedies({})}. Warned "
                f"once; {FLAT_FRAC} tracks it every step.")

    def log(self, m: StepMetrics) -> None:
        text = self.message(m)
        if text:
            log.warning(text)

    def close(self) -> None:
        pass


def remedies(config: dict) -> str:
    """The remedies for flat groups that this run (its resolved config) has not taken.

    >>> remedies({"algo": {"name": "chord"}, "reward": {"terms": [{"name": "format"}]}})
    'this run already learns from demonstrations (CHORD): give it steps, or raise algo.chord.mu_peak; algo.filter_groups=true to train on the varied groups only'
    """
    algo, terms = config.get("algo", {}), config.get("reward", {}).get("terms", [])
    name = algo.get("name", "grpo")
    out = [f"this run already learns from demonstrations ({'CHORD' if name == 'chord' else name}): "
           f"give it steps, or raise {'algo.chord.mu_peak' if name == 'chord' else 'algo.prefix.fraction'}"
           if name in ("chord", "prefix_rft") else
           "demonstrations through CHORD (algo.name=chord) or `rlft sft` first"]
    if not any(t.get("name") == "format" for t in terms):
        out.append("a format reward for partial credit (add {name: format} to reward.terms)")
    if not algo.get("filter_groups"):
        out.append("algo.filter_groups=true to train on the varied groups only")
    return "; ".join(out)
