"""Several optimizer steps per rollout batch: `train.epochs` passes over the
batch, each split into `train.minibatches` minibatches (PPO's K epochs x M
minibatches; verl's ppo_epochs / ppo_mini_batch_size, OpenRLHF's max_epochs).

With more than one update the importance ratio of PPO-clip moves away from 1
(the training loop then fills `old_logprobs` with the sampling policy's log-probs
before the first update), so the clip ranges bind.

A minibatch holds whole groups: advantages were computed over the full batch
before the split, and keeping a group's rows together also keeps anything else
taken per group or per sequence whole. The split is drawn from a generator
seeded by (seed, step, epoch): a resumed run draws the same minibatches with no
saved state, so resume stays bit-identical.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from rlft.types import TrainBatch

log = logging.getLogger("rlft")

S = TypeVar("S")


@dataclass(frozen=True)
class UpdatePlan:
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer steps per pass
    seed: int = 0  # with (step, epoch): the minibatch split

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"UpdatePlan: epochs and minibatches must be >= 1 "
                             f"(train.epochs, train.minibatches); got {self}")

    @property
    def updates(self) -> int:
        """Optimizer steps per training step (when the batch has enough groups)."""
        return self.epochs * self.minibatches


def split_groups(group_id: torch.Tensor, k: int,
                 gen: torch.Generator | None = None) -> list[torch.Tensor]:
    """Row indices of `k` minibatches, each a union of whole groups, rows in batch order.

    Units are the groups (rows sharing a `group_id` >= 0) and each demonstration
    row (`group_id` < 0: no group). Groups and demonstration rows are split
    separately, so every minibatch carries about the same share of demonstrations
    (CHORD weighs the two within each update). With `gen` the units are shuffled
    first (which groups meet, and the minibatch order); the cuts balance the
    minibatches' row counts. Needs at least `k` groups.

    >>> [r.tolist() for r in split_groups(torch.tensor([0, 0, 1, 1, 2, 2]), 3)]
    [[0, 1], [2, 3], [4, 5]]
    >>> [r.tolist() for r in split_groups(torch.tensor([5, 5, 5, 5, 7, 7, 9, 9]), 2)]
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    gid = group_id.tolist()
    groups = list(dict.fromkeys(g for g in gid if g >= 0))  # in order of first appearance
    if not 1 <= k <= len(groups):
        raise ValueError(f"split_groups: {k} minibatches need at least {k} groups; the batch "
                         f"has {len(groups)}: lower train.minibatches")
    rows_of: dict[int, list[int]] = {g: [] for g in groups}
    solo: list[list[int]] = []  # demonstration rows, one unit each
    for b, g in enumerate(gid):
        if g >= 0:
            rows_of[g].append(b)
        else:
            solo.append([b])
    out: list[list[int]] = [[] for _ in range(k)]
    for units in ([rows_of[g] for g in groups], solo):
        if gen is not None and len(units) > 1:
            units = [units[i] for i in torch.randperm(len(units), generator=gen).tolist()]
        bounds = _cuts([len(u) for u in units], k)
        for j in range(k):
            out[j] += [b for u in units[bounds[j]:bounds[j + 1]] for b in u]
    return [torch.tensor(sorted(rows), dtype=torch.long) for rows in out]


def _cuts(sizes: list[int], k: int) -> list[int]:
    """k + 1 bounds cutting `sizes` into k runs whose sums are near sum/k each;
    no run is empty when there are at least k sizes (runs may be empty otherwise).

    >>> _cuts([8, 2, 2, 2, 2], 2)
    [0, 1, 5]
    """
    n, cum = len(sizes), list(itertools.accumulate(sizes))
    total, bounds = (cum[-1] if cum else 0), [0]
    for j in range(1, k):
        target = total * j / k
        i = bisect.bisect_left(cum, target)  # the first run end whose total reaches target
        end = i + 1 if i < n and (i == 0 or cum[i] - target <= target - cum[i - 1]) else i
        lo, hi = (bounds[-1] + 1, n - (k - j)) if n >= k else (bounds[-1], n)
        bounds.append(min(max(end, lo), hi))
    return bounds + [n]


def minibatches(batch: TrainBatch, plan: UpdatePlan, step: int) -> Iterator[TrainBatch]:
    """The plan's updates over `batch`, in order: epoch after epoch, each epoch's
    minibatches freshly split and shuffled. One minibatch is the batch itself."""
    groups = int(torch.unique(batch.group_id[batch.group_id >= 0]).numel())
    k = min(plan.minibatches, max(groups, 1))
    if k < plan.minibatches:  # only dynamic sampling (algo.filter_groups) leaves fewer
        log.warning("step %d has %d groups, fewer than train.minibatches=%d (dynamic sampling "
                    "kept only these): %d minibatches per epoch this step",
                    step, groups, plan.minibatches, k)
    for epoch in range(plan.epochs):
        if k == 1:
            yield batch
            continue
        gen = torch.Generator().manual_seed((plan.seed * 1_000_003 + step) * 1_009 + epoch)
        for rows in split_groups(batch.group_id, k, gen):
            yield batch.select(rows)


def mean_stats(stats: Sequence[S]) -> S:
    """One record of a step's updates (UpdateStats, CriticStats): float fields and
    metrics averaged over the updates (a metric over those that report it),
    `seconds` and int fields (tokens) summed, `skipped` if any update was;
    `metrics["updates"]` counts the updates."""
    if not stats:
        raise ValueError("mean_stats needs the stats of at least one update")
    n, changes = len(stats), {}
    for f in dataclasses.fields(stats[0]):
        values = [getattr(s, f.name) for s in stats]
        if isinstance(values[0], bool):
            changes[f.name] = any(values)
        elif isinstance(values[0], int) or f.name == "seconds":
            changes[f.name] = sum(values)
        elif isinstance(values[0], float):
            changes[f.name] = sum(values) / n
        elif isinstance(values[0], dict):
            keys = dict.fromkeys(key for v in values for key in v)
            changes[f.name] = {key: sum(v[key] for v in values if key in v)
                               / sum(key in v for v in values) for key in keys}
            changes[f.name]["updates"] = float(n)
    return dataclasses.replace(stats[0], **changes)
