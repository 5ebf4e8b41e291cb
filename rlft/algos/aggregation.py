"""The one place per-token losses become a scalar.

Every mode divides by counts over the WHOLE step (all micro-batches, all
ranks), passed in as `GlobalCounts`; each micro-batch's result is then its
share of the whole-batch loss, and summing the shares gives exactly the
whole-batch loss, so gradients do not depend on how the batch was split
(prime-rl's rule). The only per-row normaliser (`seq_mean_token_mean`) is a
row's own token count, which no split can change.

Terms that split one token set (Prefix-RFT's prefix and sampled PPO terms)
pass `norm_mask`, the joint set: counts come from it already, and
`seq_mean_token_mean` divides each row by its joint token count, so the terms
sum to the joint per-row mean (not to a sum of per-term row means).

Masked positions are selected with `torch.where`, not multiplied by the mask,
so a non-finite value at a prompt or padding position cannot leak in as NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlft.algos.base import GlobalCounts
from rlft.registry import Registry

# (loss, mask, counts, norm_const, norm_mask) -> scalar
AggFn = Callable[[torch.Tensor, torch.Tensor, GlobalCounts, "float | None",
                  "torch.Tensor | None"], torch.Tensor]
AGGREGATIONS: Registry[AggFn] = Registry("loss aggregation")


def _masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, loss, 0.0)  # [B, L]


@AGGREGATIONS.register("token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts,
               norm_const: float | None = None, norm_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Every token of the step weighs the same: sum / total tokens."""
    return _masked(loss, mask).sum() / max(counts.tokens, 1)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts,
                       norm_const: float | None = None, norm_mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Sum over each row's tokens, mean over the step's rows."""
    return _masked(loss, mask).sum() / max(counts.seqs, 1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts,
                        norm_const: float | None = None, norm_mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Mean over each row's tokens, mean over the step's rows (original GRPO);
    each row divided by its `norm_mask` tokens when given (a split term)."""
    # A row's own token count is local to the row, so splitting rows is safe.
    row_tokens = (mask if norm_mask is None else norm_mask).sum(-1).clamp(min=1)  # [B]
    per_seq = _masked(loss, mask).sum(-1) / row_tokens  # [B, L] -> [B]
    return per_seq.sum() / max(counts.seqs, 1)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts,
                            norm_const: float | None = None,
                            norm_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dr.GRPO: sum / (rows * a constant), the constant being the max response length."""
    if norm_const is None or norm_const <= 0:
        raise ValueError(f"seq_mean_token_sum_norm needs norm_const > 0 (the max response "
                         f"length, e.g. rollout.max_new_tokens); got {norm_const}")
    return _masked(loss, mask).sum() / (max(counts.seqs, 1) * norm_const)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, counts: GlobalCounts,
              norm_const: float | None = None, norm_mask: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Reduce a per-token loss [B, L] to this shard's share of the step's scalar loss.

    `counts` are the step-wide totals for this term (`count` per shard, summed
    over micro-batches and ranks); `mode` names an entry of AGGREGATIONS.
    `norm_mask` ([B, L], a superset of `mask`): the joint token set of a split
    term, whose counts `counts` are.
    """
    if loss.shape != mask.shape:
        raise ValueError(f"aggregate: loss shape {tuple(loss.shape)} must equal mask shape "
                         f"{tuple(mask.shape)}")
    if norm_mask is not None and norm_mask.shape != mask.shape:
        raise ValueError(f"aggregate: norm_mask shape {tuple(norm_mask.shape)} must equal mask "
                         f"shape {tuple(mask.shape)}")
    return AGGREGATIONS.get(mode)(loss, mask.bool(), counts, norm_const,
                                  None if norm_mask is None else norm_mask.bool())


def count(mask: torch.Tensor) -> GlobalCounts:
    """Local counts of one shard (the learner sums them over micro-batches and ranks).

    `seqs` counts rows with at least one masked token: a row the term does not
    cover must not dilute a per-sequence mean.
    """
    return GlobalCounts(tokens=int(mask.sum()), seqs=int(mask.any(-1).sum()))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over True entries of `mask` (0 when none); for metrics."""
    return torch.where(mask.bool(), x, 0.0).sum() / mask.sum().clamp(min=1)
