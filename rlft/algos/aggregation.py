"""The one place per-token losses become a scalar.

Every mode divides by counts over the WHOLE step (all micro-batches, all
ranks), passed in as `GlobalCounts`; summing the micro-batch results then gives
exactly the whole-batch loss, so gradients do not depend on how the batch was
split (prime-rl's rule).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlft.algos.base import GlobalCounts
from rlft.registry import Registry

AggFn = Callable[[torch.Tensor, torch.Tensor, GlobalCounts, "float | None"], torch.Tensor]
AGGREGATIONS: Registry[AggFn] = Registry("loss aggregation")


@AGGREGATIONS.register("token_mean")
def token_mean(loss, mask, counts, norm_const=None):
    return (loss * mask).sum() / max(counts.tokens, 1)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(loss, mask, counts, norm_const=None):
    return (loss * mask).sum() / max(counts.seqs, 1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(loss, mask, counts, norm_const=None):
    # A row's own token count is local to the row, so splitting rows is safe.
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    return per_seq.sum() / max(counts.seqs, 1)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(loss, mask, counts, norm_const=None):
    if norm_const is None:
        raise ValueError("seq_mean_token_sum_norm needs norm_const (e.g. the max response length)")
    return (loss * mask).sum() / (max(counts.seqs, 1) * norm_const)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, counts: GlobalCounts,
              norm_const: float | None = None) -> torch.Tensor:
    return AGGREGATIONS.get(mode)(loss, mask.to(loss.dtype), counts, norm_const)


def count(mask: torch.Tensor) -> GlobalCounts:
    """Local counts of one shard (the learner all-reduces them)."""
    return GlobalCounts(tokens=int(mask.sum()), seqs=int(mask.any(-1).sum()))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)
