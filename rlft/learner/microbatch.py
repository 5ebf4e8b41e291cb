"""Batch checks and the micro-batch plan:
which rows run together and how many columns they need. Nothing here runs a
collective (`rlft.learner.distributed.world_plan` pads the plan across ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlft.learner.packing import pack_rows
from rlft.types import TrainBatch


def check_batch(batch: TrainBatch) -> None:
    """Shape and padding checks, so a bad batch fails here and not as a wrong loss."""
    shape = tuple(batch.input_ids.shape)
    if len(shape) != 2:
        raise ValueError(f"TrainBatch.input_ids must be [B, L]; got shape {shape}")
    for name in ("attention_mask", "response_mask", "advantages", "rollout_logprobs",
                 "old_logprobs", "ref_logprobs", "returns", "old_values", "prefix_mask"):
        value = getattr(batch, name)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"TrainBatch.{name} has shape {tuple(value.shape)}; it must match "
                             f"input_ids {shape} (one entry per token, aligned with input_ids)")
    if batch.expert_mask is not None and tuple(batch.expert_mask.shape) != shape[:1]:
        raise ValueError(f"TrainBatch.expert_mask has shape {tuple(batch.expert_mask.shape)}; "
                         f"it must be [B] = {shape[:1]}")
    if shape[0] == 0:
        return
    am = batch.attention_mask.bool()
    lengths = seq_lengths(am)
    if not torch.equal(am, torch.arange(shape[1], device=am.device)[None, :] < lengths[:, None]):
        raise ValueError("TrainBatch.attention_mask must be right-padded (ones, then zeros): "
                         "the learner trims padding columns and uses positions 0..n-1")
    if (batch.response_mask.bool() & ~am).any():
        raise ValueError("TrainBatch.response_mask marks padding tokens; it must lie inside "
                         "attention_mask")
    if batch.response_mask[:, 0].any():
        raise ValueError("TrainBatch.response_mask[:, 0] must be False: the first token has no "
                         "previous token to be scored from (put at least one prompt token first)")


def seq_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] right-padded mask -> [B] number of real tokens."""
    return attention_mask.long().sum(-1)  # [B]


@dataclass(frozen=True)
class MicroBatch:
    """Rows of the (local) batch and the columns they need.

    A micro-batch that is not `real` holds no rows: the learner runs a two-token
    stand-in so that a rank with fewer micro-batches still joins every FSDP
    collective its peers run.
    """

    rows: torch.Tensor  # [b] long, indices into the batch
    cols: int  # longest row of this micro-batch; later columns are padding
    real: bool = True


def plan_micro_batches(lengths: list[int], token_budget: int, packed: bool = False
                       ) -> list[MicroBatch]:
    """Greedy packing, longest rows first, while rows x longest row <= token_budget.

    Sorting by length keeps rows of similar length together, so trimming each
    micro-batch to its own longest row removes most padding. A row longer than
    the budget goes alone (rows are never split). `packed`: the model runs the
    rows without padding, so the budget caps their real tokens instead
    (`rlft.learner.packing.pack_rows`).
    """
    if token_budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1; got {token_budget}")
    if packed:
        return [MicroBatch(torch.tensor(rows), lengths[rows[0]])
                for rows in pack_rows(lengths, token_budget)]
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])  # stable: ties keep row order
    plans: list[MicroBatch] = []
    current: list[int] = []
    for r in order:
        width = lengths[current[0]] if current else lengths[r]  # the first row is the longest
        if current and (len(current) + 1) * width > token_budget:
            plans.append(MicroBatch(torch.tensor(current), lengths[current[0]]))
            current = []
        current.append(r)
    if current:
        plans.append(MicroBatch(torch.tensor(current), lengths[current[0]]))
    return plans


def pad_plan(plan: list[MicroBatch], count: int) -> list[MicroBatch]:
    """Append stand-in micro-batches up to `count` (the most any rank has)."""
    filler = MicroBatch(torch.zeros(0, dtype=torch.long), 2, real=False)
    return plan + [filler] * (count - len(plan))


def stand_in_inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-token input for a stand-in micro-batch: ids, attention mask, selection."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)  # [1, 2]
    mask = torch.ones(1, 2, dtype=torch.bool, device=device)
    select = torch.tensor([[False, True]], device=device)
    return ids, mask, select
