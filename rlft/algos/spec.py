"""What an algorithm is, as data: the controller and learner read these fields
and never branch on an algorithm's name (DESIGN.md, "The loop").

One spec file per algorithm (`rlft/algos/grpo.py`, ...) registers a builder in
`ALGORITHMS`; the builder is the only place that reads the run config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlft.algos.base import AdvantageParams
from rlft.registry import Registry
from rlft.types import Prompt, PromptBatch


@dataclass(frozen=True)
class LossTermSpec:
    """One weighted loss term the learner sums.

    `rows` picks the batch rows the term covers through `TrainBatch.expert_mask`
    ("policy": sampled rows, "expert": demonstration rows, "all"); the term's
    token mask is `response_mask` restricted to those rows.
    """

    loss: str  # name in rlft.algos.base.LOSSES
    weight: float
    rows: str = "policy"
    agg: str = "token_mean"  # name in rlft.algos.aggregation.AGGREGATIONS
    params: Mapping[str, Any] = field(default_factory=dict)
    norm_const: float | None = None  # seq_mean_token_sum_norm's constant

    def __post_init__(self) -> None:
        if self.rows not in ("policy", "expert", "all"):
            raise ValueError(f"LossTermSpec.rows must be policy, expert or all; got {self.rows!r}")


def plain_batch(prompts: list[Prompt], step: int, n: int) -> PromptBatch:
    """Default sampler: each prompt its own group, no forced prefix."""
    return PromptBatch.plain(prompts, n, first_group=step * len(prompts))


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantage: str  # name in rlft.algos.base.ADVANTAGES
    adv_params: AdvantageParams
    terms: Callable[[int], tuple[LossTermSpec, ...]]  # step -> terms (weights may follow schedules)
    needs_ref: bool = False  # the learner keeps a frozen reference model
    min_group_size: int = 1  # smallest rollout.n the estimator can use
    make_batch: Callable[[list[Prompt], int, int], PromptBatch] = plain_batch
    step_metrics: Callable[[int], Mapping[str, float]] = lambda step: {}


ALGORITHMS: Registry[Callable[[Any], Algorithm]] = Registry("algorithm")


def build_algorithm(cfg: Any) -> Algorithm:
    """Resolve `cfg.algo.name` and check the run can use it."""
    from rlft.algos import grpo  # noqa: F401  (registration)

    algo = ALGORITHMS.get(cfg.algo.name)(cfg)
    if cfg.rollout.n < algo.min_group_size:
        raise ValueError(
            f"rollout.n={cfg.rollout.n} is too small for {algo.name} with the {algo.advantage} "
            f"estimator: set rollout.n >= {algo.min_group_size} (a group needs a baseline)"
        )
    return algo
