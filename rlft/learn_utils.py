"""Pieces of the learner that are plain functions: the log-prob head, the
micro-batch plan, the row selector and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from rlft.algos.logprobs import logprobs_from_hidden
from rlft.types import TrainBatch


class PolicyLogprobs(nn.Module):
    """Causal LM -> per-token log-probs and entropy on selected positions.

    Runs the decoder body, then `logprobs_from_hidden` on the final hidden
    states of the selected tokens only, so full [tokens, V] float logits are
    never built. Log-probs use the raw logits (temperature 1), the quantity the
    rollout engines report.
    """

    def __init__(self, lm: nn.Module, chunk: int) -> None:
        super().__init__()
        self.lm, self.chunk = lm, chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.lm.model(input_ids=input_ids,
                               attention_mask=attention_mask.long()).last_hidden_state  # [b, L, H]
        sel = select[:, 1:]  # token t is predicted at position t-1
        h = hidden[:, :-1][sel]  # [N, H]
        labels = input_ids[:, 1:][sel]  # [N]
        lp, ent = logprobs_from_hidden(h, self.lm.lm_head.weight, labels, self.chunk)
        zeros = torch.zeros(sel.shape, dtype=lp.dtype, device=lp.device)  # [b, L-1]
        lp_full = torch.cat([zeros[:, :1], zeros.masked_scatter(sel, lp)], 1)  # [b, L]
        ent_full = torch.cat([zeros[:, :1], zeros.masked_scatter(sel, ent)], 1)
        return lp_full, ent_full


def rows_mask(batch: TrainBatch, rows: str) -> torch.Tensor:
    """response_mask restricted to the term's rows ("policy", "expert", "all")."""
    if rows == "all" or batch.expert_mask is None:
        return batch.response_mask if rows != "expert" else \
            torch.zeros_like(batch.response_mask)
    keep = batch.expert_mask if rows == "expert" else ~batch.expert_mask
    return batch.response_mask & keep[:, None]


def micro_batches(batch: TrainBatch, token_budget: int, min_count: int
                  ) -> Iterator[tuple[torch.Tensor, int, bool]]:
    """(row indices, columns, real) per micro-batch, in row order.

    Rows are packed while rows x longest row fits `token_budget`; each
    micro-batch is cut to its own longest row. When another rank needs more
    micro-batches (`min_count`), the extra ones are marked not real: the
    learner runs them for the collectives and adds nothing to the loss.
    """
    lengths = batch.attention_mask.sum(-1).tolist()
    plans: list[list[int]] = []
    current: list[int] = []
    width = 0
    for r, n in enumerate(lengths):
        w = max(width, int(n))
        if current and (len(current) + 1) * w > token_budget:
            plans.append(current)
            current, w = [], int(n)
        current.append(r)
        width = w
    if current:
        plans.append(current)
    for rows in plans:
        yield torch.tensor(rows), max(int(lengths[r]) for r in rows), True
    for _ in range(min_count - len(plans)):
        yield torch.tensor([0]), int(lengths[0]), False


def lr_lambda(p: Any) -> Callable[[int], float]:
    """Linear warm-up, then constant / cosine / linear decay to min_lr_ratio."""

    def fn(step: int) -> float:
        if step < p.warmup_steps:
            return (step + 1) / p.warmup_steps
        if p.lr_schedule == "constant":
            return 1.0
        span = max(1, p.total_steps - p.warmup_steps)
        t = min(1.0, (step - p.warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if p.lr_schedule == "cosine" else 1 - t
        return p.min_lr_ratio + (1 - p.min_lr_ratio) * shape

    return fn
