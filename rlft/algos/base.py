"""The two signatures every algorithm piece shares, and their registries.

An advantage estimator maps `AdvantageInputs` + `AdvantageParams` to
`AdvantageOutput`; a loss term maps `LossInputs` + keyword params to a
per-token `LossOutput`. Callers never special-case a name (docs/architecture.md, "Rules").
Per-token tensors are [B, L], aligned with the batch's `input_ids`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from rlft.registry import Registry


@dataclass(frozen=True)
class AdvantageInputs:
    token_rewards: torch.Tensor  # [B, L] outcome score on the last response token (+ per-token terms)
    response_mask: torch.Tensor  # [B, L] bool
    group_id: torch.Tensor  # [B] long; equal ids share a baseline, wherever they sit
    values: torch.Tensor | None = None  # [B, L] critic values (GAE only)
    prefix_mask: torch.Tensor | None = None  # [B, L] bool forced prefix tokens (prefix_rft only)


@dataclass(frozen=True)
class AdvantageParams:
    eps: float = 1e-6  # std floor for group / batch normalisation
    gamma: float = 1.0  # discount (gae, reinforce_pp returns)
    lam: float = 1.0  # GAE lambda
    # prefix_rft only: the estimator of the sampled tokens, and whether prefixed
    # and plain rows of a group are separate groups for it.
    base: str = "dr_grpo"
    split_prefix: bool = True


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: torch.Tensor  # [B, L], zero outside response_mask
    returns: torch.Tensor  # [B, L], value targets (equal to advantages for critic-free estimators)


AdvantageFn = Callable[[AdvantageInputs, AdvantageParams], AdvantageOutput]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


@dataclass(frozen=True)
class LossInputs:
    logprobs: torch.Tensor  # [B, L] current policy, requires grad
    response_mask: torch.Tensor  # [B, L] bool: the tokens this term covers
    advantages: torch.Tensor  # [B, L]
    entropy: torch.Tensor | None = None  # [B, L]
    old_logprobs: torch.Tensor | None = None  # [B, L]
    ref_logprobs: torch.Tensor | None = None  # [B, L]
    rollout_logprobs: torch.Tensor | None = None  # [B, L]
    values: torch.Tensor | None = None  # [B, L] current critic, requires grad
    old_values: torch.Tensor | None = None  # [B, L]
    returns: torch.Tensor | None = None  # [B, L]
    prefix_mask: torch.Tensor | None = None  # [B, L] bool


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # [B, L] per-token loss; aggregation masks and normalises it
    metrics: Mapping[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, L], token-averaged


LossFn = Callable[..., LossOutput]  # (LossInputs, **params) -> LossOutput
LOSSES: Registry[LossFn] = Registry("loss term")


@dataclass(frozen=True)
class GlobalCounts:
    """Totals over the whole step (all micro-batches, all ranks) for one term."""

    tokens: int
    seqs: int
