"""What an algorithm is, as data: the training loop and the learner read these
fields and never branch on an algorithm's name.

An algorithm file (`rlft/algos/grpo.py`, ...) imports this contract only and
defines a `build(cfg) -> Algorithm`; the catalogue (`rlft/algos/catalogue.py`)
names them. The builder is the only place that reads the run config.

Every optional behaviour is a hook whose default does nothing (`keep_all`,
`no_extra_rows`, `no_shaping`, `no_filter`), called on every step; the batch
fields an algorithm needs computed before advantages are one declared set
(`needs`), filled by one function of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlft.algos.base import AdvantageParams
from rlft.types import ROWS, TOKENS, Prompt, PromptBatch, ScoredRollouts, TrainBatch

REWARD_SOURCES = ("service", "self_reward")
# Batch fields the loop can fill before advantages (Algorithm.needs): the
# reference's log-probs, the sampling policy's log-probs, the critic's values,
# and the sampling policy's entropy (for a token filter).
BATCH_FIELDS = ("ref_logprobs", "old_logprobs", "old_values", "entropy")


@dataclass(frozen=True)
class LossTermSpec:
    """One weighted loss term the learner sums.

    `rows` picks the batch rows the term covers through `TrainBatch.expert_mask`
    ("policy": sampled rows, "expert": demonstration rows, "all"); `tokens`
    picks tokens within them through `TrainBatch.prefix_mask` ("all",
    "sampled": not forced, "prefix": forced). The term's token mask is
    `TrainBatch.loss_mask(tokens, rows)`.

    `norm_tokens="all"` normalises the term by the counts of all its rows'
    tokens instead of its own, so two terms that split one token set (e.g.
    prefix and sampled tokens with different clip ranges) sum to one joint
    mean, for every aggregation (seq_mean_token_mean divides each row by its
    joint token count). A term's metrics (clip_frac, ...) stay means over its
    own tokens.
    """

    loss: str  # name in rlft.algos.base.LOSSES
    weight: float
    rows: str = "policy"
    agg: str = "token_mean"  # name in rlft.algos.aggregation.AGGREGATIONS
    params: Mapping[str, Any] = field(default_factory=dict)
    norm_const: float | None = None  # seq_mean_token_sum_norm's constant
    tokens: str = "all"
    norm_tokens: str | None = None  # None: the term's own tokens

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"LossTermSpec.rows must be one of {', '.join(ROWS)}; "
                             f"got {self.rows!r}")
        if self.tokens not in TOKENS:
            raise ValueError(f"LossTermSpec.tokens must be one of {', '.join(TOKENS)}; "
                             f"got {self.tokens!r}")
        if self.norm_tokens not in (None, "all"):
            raise ValueError(f"LossTermSpec.norm_tokens must be None or 'all' (a superset of "
                             f"the term's tokens); got {self.norm_tokens!r}")


def plain_batch(prompts: list[Prompt], step: int, n: int) -> PromptBatch:
    """Default sampler: each prompt its own group, no forced prefix."""
    return PromptBatch.plain(prompts, n, first_group=step * len(prompts))


def keep_all(scored: ScoredRollouts) -> torch.Tensor:
    """Default group filter: every row stays ([B] bool)."""
    return torch.ones(len(scored.rollouts), dtype=torch.bool)


def no_extra_rows(scored: ScoredRollouts, prompts: PromptBatch, step: int) -> ScoredRollouts:
    """Default: no rows appended after scoring (CHORD appends demonstrations)."""
    return scored


def no_shaping(batch: TrainBatch, token_rewards: torch.Tensor
               ) -> tuple[torch.Tensor, Mapping[str, float]]:
    """Default: the token rewards [B, L] unchanged, no metrics."""
    return token_rewards, {}


def no_filter(batch: TrainBatch, entropy: torch.Tensor | None) -> TrainBatch:
    """Default: the batch with advantages, unchanged."""
    return batch


@dataclass(frozen=True)
class Stage:
    """A stage the run executes before any actor starts (Self-Rewarding PPO's SFT).

    `kind` names a runner in `rlft.run.stages.STAGES`, which writes (or, on a
    resumed run, reuses) the folder `<run folder>/<folder>`; `then` turns the
    algorithm into the one to run, given that folder.
    """

    kind: str
    folder: str
    then: Callable[[Algorithm, Path], Algorithm]


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantage: str  # name in rlft.algos.base.ADVANTAGES
    adv_params: AdvantageParams
    terms: Callable[[int], tuple[LossTermSpec, ...]]  # step -> terms (weights may follow schedules)
    # Batch fields (BATCH_FIELDS) the loop fills before advantages; the learner
    # keeps a frozen reference model when "ref_logprobs" is among them.
    needs: frozenset[str] = frozenset()
    min_group_size: int = 1  # smallest rollout.n the estimator can use
    make_batch: Callable[[list[Prompt], int, int], PromptBatch] = plain_batch
    step_metrics: Callable[[int], Mapping[str, float]] = lambda step: {}
    # Scored round -> [B] bool rows to keep; up to `filter_rounds` prompt
    # batches are drawn per step to refill the first round's number of groups
    # (DAPO dynamic sampling keeps groups whose rewards differ).
    keep_groups: Callable[[ScoredRollouts], torch.Tensor] = keep_all
    filter_rounds: int = 1
    # (scored rollouts, the step's first PromptBatch, step) -> scored rollouts
    # with rows appended, e.g. CHORD's demonstration rows (`expert` True).
    add_rows: Callable[[ScoredRollouts, PromptBatch, int], ScoredRollouts] = no_extra_rows
    # (TrainBatch with advantages, the sampling policy's entropy [B, L] when
    # "entropy" is needed) -> the batch with narrowed masks, e.g. Prefix-RFT's
    # top-entropy prefix tokens.
    token_filter: Callable[[TrainBatch, torch.Tensor | None], TrainBatch] = no_filter
    # The critic's loss terms (workers/critic.py). Non-empty: a critic is built;
    # it gives `old_values` ("old_values" in needs) and, after the policy update, fits
    # `returns` (PPO).
    critic_terms: tuple[LossTermSpec, ...] = ()
    # (TrainBatch before advantages, token rewards [B, L]) -> (token rewards,
    # metrics): per-token reward terms, e.g. PPO's KL penalty in the reward.
    shape_rewards: Callable[[TrainBatch, torch.Tensor],
                            tuple[torch.Tensor, Mapping[str, float]]] = no_shaping
    # Who scores rollouts: "service" (the RewardService over reward.terms) or
    # "self_reward" (workers/self_reward.py, log pi_sft - log pi_base), built
    # with `reward_args` as keyword arguments.
    reward_source: str = "service"
    reward_args: Mapping[str, Any] = field(default_factory=dict)
    # The model the policy, rollout workers and critic start from; None: model.name.
    policy_model: str | None = None
    # Stages run in order before any actor starts (rlft/run/stages.py).
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if self.filter_rounds < 1:
            raise ValueError(f"Algorithm.filter_rounds must be >= 1, got {self.filter_rounds}")
        if self.reward_source not in REWARD_SOURCES:
            raise ValueError(f"Algorithm.reward_source must be one of {', '.join(REWARD_SOURCES)}; "
                             f"got {self.reward_source!r}")
        unknown = set(self.needs) - set(BATCH_FIELDS)
        if unknown:
            raise ValueError(f"Algorithm.needs: {sorted(unknown)} are not batch fields; choose "
                             f"from {', '.join(BATCH_FIELDS)}")
        if ("old_values" in self.needs) != bool(self.critic_terms):
            raise ValueError(f"Algorithm {self.name!r}: values come from a critic, so "
                             f"'old_values' in needs and critic_terms (e.g. "
                             f"LossTermSpec('value_clip', 1.0)) go together")
