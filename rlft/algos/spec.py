"""What an algorithm is, as data: the controller and learner read these fields
and never branch on an algorithm's name (DESIGN.md, "The loop").

One spec file per algorithm (`rlft/algos/grpo.py`, ...) registers a builder in
`ALGORITHMS`; the builder is the only place that reads the run config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlft.algos.base import AdvantageParams
from rlft.registry import Registry
from rlft.types import Prompt, PromptBatch, Rollouts, TrainBatch

TOKENS = ("all", "sampled", "prefix")
REWARD_SOURCES = ("service", "self_reward")


@dataclass(frozen=True)
class LossTermSpec:
    """One weighted loss term the learner sums.

    `rows` picks the batch rows the term covers through `TrainBatch.expert_mask`
    ("policy": sampled rows, "expert": demonstration rows, "all"); `tokens`
    picks tokens within them through `TrainBatch.prefix_mask` ("all",
    "sampled": not forced, "prefix": forced). The term's token mask is
    `response_mask` restricted to both.

    `norm_tokens="all"` normalises the term by the counts of all its rows'
    tokens instead of its own, so two terms that split one token set (e.g.
    prefix and sampled tokens with different clip ranges) sum to one joint
    mean: exact for token_mean, seq_mean_token_sum and seq_mean_token_sum_norm.
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
        if self.rows not in ("policy", "expert", "all"):
            raise ValueError(f"LossTermSpec.rows must be policy, expert or all; got {self.rows!r}")
        if self.tokens not in TOKENS:
            raise ValueError(f"LossTermSpec.tokens must be one of {', '.join(TOKENS)}; "
                             f"got {self.tokens!r}")
        if self.norm_tokens not in (None, "all"):
            raise ValueError(f"LossTermSpec.norm_tokens must be None or 'all' (a superset of "
                             f"the term's tokens); got {self.norm_tokens!r}")


def token_mask(batch: TrainBatch, tokens: str) -> torch.Tensor:
    """`response_mask` [B, L] restricted to "all", "sampled" or "prefix" tokens.

    Without a `prefix_mask` no token is forced: "prefix" selects none.
    """
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {', '.join(TOKENS)}; got {tokens!r}")
    resp = batch.response_mask.bool()
    if tokens == "all":
        return resp
    prefix = batch.prefix_mask.bool() if batch.prefix_mask is not None \
        else torch.zeros_like(resp)
    return resp & prefix if tokens == "prefix" else resp & ~prefix  # [B, L]


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
    # DAPO dynamic sampling: drop groups whose rewards are all equal (they have
    # zero advantage) and draw up to `filter_rounds` prompt batches per step to
    # refill the step's number of groups.
    filter_groups: bool = False
    filter_rounds: int = 1
    # (the step's first PromptBatch, step) -> demonstration rows (`expert`
    # True) the controller appends after scoring; their policy_version is
    # stamped by the controller. None: no demonstration rows.
    expert_rows: Callable[[PromptBatch, int], Rollouts] | None = None
    # (TrainBatch with advantages, current policy's entropy [B, L]) -> the batch
    # with narrowed masks, e.g. Prefix-RFT's top-entropy prefix tokens. The
    # controller computes the entropy (one no-grad pass) only when this is set.
    token_filter: Callable[[TrainBatch, torch.Tensor], TrainBatch] | None = None
    # A critic (workers/critic.py): the controller asks it for `values` before
    # advantages and, after the policy update, has it fit `returns` with the
    # value loss terms `critic_terms` (PPO).
    needs_critic: bool = False
    critic_terms: tuple[LossTermSpec, ...] = ()
    # The controller fills `old_logprobs` with the current policy's log-probs
    # (one no-grad pass) before advantages, e.g. for a KL penalty in the reward.
    needs_old_logprobs: bool = False
    # (TrainBatch before advantages, token rewards [B, L]) -> (token rewards,
    # metrics): per-token reward terms, e.g. PPO's KL penalty in the reward.
    shape_rewards: Callable[[TrainBatch, torch.Tensor],
                            tuple[torch.Tensor, Mapping[str, float]]] | None = None
    # Who scores rollouts: "service" (the RewardService over reward.terms) or
    # "self_reward" (workers/self_reward.py, log pi_sft - log pi_base), built
    # with `reward_args` as keyword arguments.
    reward_source: str = "service"
    reward_args: Mapping[str, Any] = field(default_factory=dict)
    # The model the policy, rollout workers and critic start from; None: model.name.
    policy_model: str | None = None
    # (run folder) -> the spec to run. Called once, before any actor starts, for
    # a stage the algorithm needs first (Self-Rewarding PPO's SFT model).
    prepare: Callable[[Path], Algorithm] | None = None

    def __post_init__(self) -> None:
        if self.filter_rounds < 1:
            raise ValueError(f"Algorithm.filter_rounds must be >= 1, got {self.filter_rounds}")
        if self.reward_source not in REWARD_SOURCES:
            raise ValueError(f"Algorithm.reward_source must be one of {', '.join(REWARD_SOURCES)}; "
                             f"got {self.reward_source!r}")
        if self.needs_critic and not self.critic_terms:
            raise ValueError(f"Algorithm {self.name!r} needs a critic but gives no critic_terms "
                             f"(e.g. LossTermSpec('value_clip', 1.0))")


ALGORITHMS: Registry[Callable[[Any], Algorithm]] = Registry("algorithm")


class Demonstrations:
    """A row's `demonstration` as response token ids (EOS last), for specs that
    train on or prefix with demonstrations. The tokenizer loads on first use,
    so building the spec (config validation) stays cheap."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._tok: Any = None
        self._ids: dict[str, tuple[int, ...]] = {}

    def ids(self, prompt: Prompt) -> tuple[int, ...]:
        if prompt.uid not in self._ids:
            from rlft.data import demonstration_ids
            from rlft.models import load_tokenizer

            if self._tok is None:
                self._tok = load_tokenizer(self.model_name)
            self._ids[prompt.uid] = demonstration_ids(prompt, self._tok)
        return self._ids[prompt.uid]


def build_algorithm(cfg: Any) -> Algorithm:
    """Resolve `cfg.algo.name` and check the run can use it."""
    from rlft.algos import (  # noqa: F401  (registration)
        chord,
        grpo,
        ppo,
        prefix_rft,
        self_rewarding,
    )

    algo = ALGORITHMS.get(cfg.algo.name)(cfg)
    if cfg.rollout.n < algo.min_group_size:
        raise ValueError(
            f"rollout.n={cfg.rollout.n} is too small for {algo.name} with the {algo.advantage} "
            f"estimator: set rollout.n >= {algo.min_group_size} (a group needs a baseline)"
        )
    return algo
