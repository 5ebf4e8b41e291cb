"""ScoredRollouts -> TrainBatch: padding, masks, outcome rewards, advantages;
and the row surgery before it (dynamic-sampling filters, demonstration rows).

This is the "advantages" stage of the loop. It is algorithm-blind: the
estimator comes from the spec by name, and per-token reward terms (e.g. a KL
penalty in the reward) are passed in as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from rlft.algos.base import ADVANTAGES, AdvantageInputs, AdvantageParams
from rlft.types import Prompt, RewardFailures, Rollouts, ScoredRollouts, TrainBatch

# Per-sample fields of `Rollouts` (everything but `prompts` and `policy_version`).
_ROW_FIELDS = ("prompt_index", "prompt_ids", "response_ids", "response_text",
               "rollout_logprobs", "prefix_len", "finish_reason", "group_id")


def collate(scored: ScoredRollouts, pad_id: int) -> tuple[TrainBatch, torch.Tensor]:
    """Right-pad prompt+response rows; returns the batch (advantages still zero)
    and the outcome rewards placed on each row's last response token."""
    ro = scored.rollouts
    rows = [list(p) + list(r) for p, r in zip(ro.prompt_ids, ro.response_ids)]
    B, L = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # [B, L]
    attention = torch.zeros(B, L, dtype=torch.bool)
    response = torch.zeros(B, L, dtype=torch.bool)
    prefix = torch.zeros(B, L, dtype=torch.bool)
    rollout_lp = torch.zeros(B, L)
    token_rewards = torch.zeros(B, L)
    for b, row in enumerate(rows):
        p, r = len(ro.prompt_ids[b]), len(ro.response_ids[b])
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[b, : len(row)] = True
        response[b, p : p + r] = True
        prefix[b, p : p + ro.prefix_len[b]] = True
        if ro.rollout_logprobs[b]:
            rollout_lp[b, p : p + r] = torch.tensor(ro.rollout_logprobs[b])
        if r > 0:
            token_rewards[b, p + r - 1] = float(scored.rewards[b])
    expert = torch.tensor(ro.expert or (False,) * B, dtype=torch.bool)
    batch = TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=response,
        advantages=torch.zeros(B, L),
        group_id=torch.tensor(ro.group_id, dtype=torch.long),
        policy_version=ro.policy_version,
        rollout_logprobs=rollout_lp,
        prefix_mask=prefix,
        expert_mask=expert,
    )
    return batch, token_rewards


def with_advantages(
    batch: TrainBatch,
    token_rewards: torch.Tensor,  # [B, L]
    estimator: str,
    params: AdvantageParams,
) -> TrainBatch:
    """Run the named estimator over the sampled (non-expert) rows.

    Demonstration rows carry no advantage: their loss terms (SFT, CHORD's
    expert term) do not use one, and they must not shift a group's baseline.
    """
    fn = ADVANTAGES.get(estimator)
    policy_rows = ~batch.expert_mask if batch.expert_mask is not None else None
    mask = batch.response_mask & policy_rows[:, None] if policy_rows is not None \
        else batch.response_mask
    out = fn(AdvantageInputs(token_rewards=token_rewards * mask, response_mask=mask,
                             group_id=batch.group_id, values=batch.values), params)
    return batch.with_(advantages=out.advantages, returns=out.returns)


# -- row surgery before collate ----------------------------------------------

def take(scored: ScoredRollouts, keep: torch.Tensor) -> ScoredRollouts:
    """The rows where `keep` ([B] bool) is True, in order; prompts are kept whole."""
    ro = scored.rollouts
    if tuple(keep.shape) != (len(ro),):
        raise ValueError(f"take: keep has shape {tuple(keep.shape)}; it must be [B]=({len(ro)},)")
    rows = keep.nonzero().flatten().tolist()
    changes = {f: tuple(getattr(ro, f)[b] for b in rows) for f in _ROW_FIELDS}
    if ro.expert:
        changes["expert"] = tuple(ro.expert[b] for b in rows)
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


def demonstration_rollouts(prompts: Sequence[Prompt], response_ids: Sequence[tuple[int, ...]],
                           response_text: Sequence[str]) -> Rollouts:
    """Demonstration rows (`expert` True), one per prompt given (repeats allowed).

    They carry no rollout log-probs, no group (id -1: they take no part in
    advantages) and policy_version -1 until `add_expert_rows` stamps it.
    """
    if not (len(prompts) == len(response_ids) == len(response_text)):
        raise ValueError(f"demonstration_rollouts: {len(prompts)} prompts, {len(response_ids)} "
                         f"responses and {len(response_text)} texts must agree in number")
    m = len(prompts)
    return Rollouts(
        prompt_index=tuple(range(m)), prompts=tuple(prompts),
        prompt_ids=tuple(tuple(p.prompt_ids) for p in prompts),
        response_ids=tuple(tuple(r) for r in response_ids), response_text=tuple(response_text),
        rollout_logprobs=((),) * m, prefix_len=(0,) * m, finish_reason=("stop",) * m,
        group_id=(-1,) * m, policy_version=-1, expert=(True,) * m)


def add_expert_rows(scored: ScoredRollouts, expert: Rollouts) -> ScoredRollouts:
    """Append demonstration rows after scoring: reward 0 and NaN components (they
    are never scored; `with_advantages` leaves them out), this batch's version."""
    if expert.expert and not all(expert.expert):
        raise ValueError("add_expert_rows: every appended row must be a demonstration "
                         "(Rollouts.expert all True)")
    m = len(expert)
    expert = replace(expert, expert=(True,) * m,
                     policy_version=scored.rollouts.policy_version)
    return replace(scored, rollouts=Rollouts.concat([scored.rollouts, expert]),
                   rewards=torch.cat([scored.rewards, torch.zeros(m, dtype=scored.rewards.dtype)]),
                   components={k: torch.cat([v, torch.full((m,), torch.nan, dtype=v.dtype)])
                               for k, v in scored.components.items()})
