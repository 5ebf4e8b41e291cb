"""Data-parallel calls: each rank of a role gets its shard of a batch (rows
r, r + world, ... : `TrainBatch.rank_rows`), and per-row results come back
in batch order (`gather_rows`). One helper for every caller: the update, the
critic's values and the learner's log-probs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
import torch

from rlft.types import TrainBatch


def on_ranks(ranks: Sequence[Any], method: str, batch: TrainBatch, *args: Any) -> list[Any]:
    """`method(shard, *args)` on every rank (Ray actor handles), each with its own
    shard of `batch`; the results in rank order."""
    world = len(ranks)
    return ray.get([getattr(h, method).remote(batch.rank_rows(r, world), *args)
                    for r, h in enumerate(ranks)])


def gather_rows(parts: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-rank row shards ([B_r, ...], from `rank_rows`) back as one tensor shaped
    like `like`, in batch order.

    >>> gather_rows([torch.tensor([[0.], [2.]]), torch.tensor([[1.]])], torch.zeros(3, 1)).tolist()
    [[0.0], [1.0], [2.0]]
    """
    out, world = torch.zeros_like(like), len(parts)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out
