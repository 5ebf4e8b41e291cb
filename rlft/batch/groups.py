"""Row surgery on scored rollouts by group, before collating: DAPO's
dynamic-sampling filter (`varied_groups`), selection (`take`, `first_groups`)
and the join of several sampling rounds of one step (`merge_rounds`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from rlft.types import RewardFailures, Rollouts, ScoredRollouts

# Per-sample fields of `Rollouts` (everything but `prompts` and `policy_version`).
_ROW_FIELDS = ("prompt_index", "prompt_ids", "response_ids", "response_text",
               "rollout_logprobs", "prefix_len", "finish_reason", "group_id")


def take(scored: ScoredRollouts, keep: torch.Tensor) -> ScoredRollouts:
    """The rows where `keep` ([B] bool) is True, in order; prompts are kept whole."""
    ro = scored.rollouts
    if tuple(keep.shape) != (len(ro),):
        raise ValueError(f"take: keep has shape {tuple(keep.shape)}; it must be [B]=({len(ro)},)")
    rows = keep.nonzero().flatten().tolist()
    changes = {f: tuple(getattr(ro, f)[b] for b in rows) for f in _ROW_FIELDS}
    for f in ("expert", "model_mask", "conversation"):  # per-sample when present
        if getattr(ro, f):
            changes[f] = tuple(getattr(ro, f)[b] for b in rows)
    return replace(scored, rollouts=replace(ro, **changes), rewards=scored.rewards[keep],
                   components={k: v[keep] for k, v in scored.components.items()})


def varied_groups(scored: ScoredRollouts) -> torch.Tensor:
    """[B] bool: rows whose group's rewards are not all equal (DAPO's filter).

    A group whose samples all scored the same has zero advantage under every
    group-relative estimator, so it only dilutes the batch.
    """
    gid = torch.tensor(scored.rollouts.group_id, dtype=torch.long)  # [B]
    _, inv = torch.unique(gid, return_inverse=True)  # [B] dense group index
    k = int(inv.max()) + 1 if inv.numel() else 0
    r = scored.rewards.double()
    hi = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amax")
    lo = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amin")
    return (hi > lo)[inv]  # [K] -> [B]


def first_groups(scored: ScoredRollouts, k: int) -> ScoredRollouts:
    """Rows of the first `k` groups, in order of first appearance."""
    order: dict[int, None] = dict.fromkeys(scored.rollouts.group_id)
    wanted = set(list(order)[:k])
    return take(scored, torch.tensor([g in wanted for g in scored.rollouts.group_id],
                                     dtype=torch.bool))


def num_groups(scored: ScoredRollouts) -> int:
    return len(set(scored.rollouts.group_id))


def merge_rounds(parts: Sequence[ScoredRollouts]) -> ScoredRollouts:
    """Join the scored rollouts of several sampling rounds of one step.

    Rounds may reuse group ids (each round's sampler numbers from the step),
    so with more than one round the ids are renumbered densely by (round, id).
    """
    if not parts:
        raise ValueError("merge_rounds needs at least one part")
    if len(parts) == 1:
        return parts[0]
    dense: dict[tuple[int, int], int] = {}
    relabelled = []
    for r, p in enumerate(parts):
        ids = tuple(dense.setdefault((r, g), len(dense)) for g in p.rollouts.group_id)
        relabelled.append(replace(p.rollouts, group_id=ids))
    names = set().union(*(p.components for p in parts))
    components = {n: torch.cat([p.components.get(n, torch.full((len(p.rollouts),), torch.nan))
                                for p in parts]) for n in sorted(names)}
    failures = RewardFailures(*(sum(getattr(p.failures, f) for p in parts)
                                for f in ("raised", "timeout", "invalid")))
    return ScoredRollouts(rollouts=Rollouts.concat(relabelled),
                          rewards=torch.cat([p.rewards for p in parts]), components=components,
                          failures=failures, seconds=sum(p.seconds for p in parts))
