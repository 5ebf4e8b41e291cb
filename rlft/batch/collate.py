"""ScoredRollouts -> TrainBatch: padding, masks, outcome rewards, advantages;
and demonstration rows, appended before collating.

This is the "advantages" stage of the loop. It is algorithm-blind: the
estimator comes from the spec by name, and per-token reward terms (e.g. a KL
penalty in the reward) are passed in as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from rlft.algos.base import ADVANTAGES, AdvantageInputs, AdvantageParams
from rlft.types import Prompt, Rollouts, ScoredRollouts, TrainBatch


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
        # Multi-turn: only the model's own tokens carry loss, not tool results or glue.
        response[b, p : p + r] = torch.tensor(ro.model_mask[b], dtype=torch.bool) \
            if ro.model_mask else True
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
        truncated=torch.tensor([f == "length" for f in ro.finish_reason], dtype=torch.bool),
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
    mask = batch.loss_mask(rows="policy")
    out = fn(AdvantageInputs(token_rewards=token_rewards * mask, response_mask=mask,
                             group_id=batch.group_id, values=batch.old_values,
                             prefix_mask=batch.prefix_mask), params)
    return batch.with_(advantages=out.advantages, returns=out.returns)



# -- demonstration rows ------------------------------------------------------

def demonstration_rollouts(prompts: Sequence[Prompt], response_ids: Sequence[tuple[int, ...]],
                           response_text: Sequence[str],
                           model_masks: Sequence[tuple[bool, ...]] = ()) -> Rollouts:
    """Demonstration rows (`expert` True), one per prompt given (repeats allowed).

    `model_masks` (multi-turn demonstrations, `DemoTokens.model_mask`) say which
    response tokens are the model's; an empty one means all of them.

    They carry no rollout log-probs, no group (id -1: they take no part in
    advantages) and policy_version -1 until `add_expert_rows` stamps it.
    """
    if not (len(prompts) == len(response_ids) == len(response_text)):
        raise ValueError(f"demonstration_rollouts: {len(prompts)} prompts, {len(response_ids)} "
                         f"responses and {len(response_text)} texts must agree in number")
    m = len(prompts)
    masks = tuple(tuple(k) or (True,) * len(r) for k, r in zip(model_masks, response_ids)) \
        if any(model_masks) else ()
    if masks and any(len(k) != len(r) for k, r in zip(masks, response_ids)) or \
            len(model_masks) not in (0, m):
        raise ValueError("demonstration_rollouts: each model mask must match its response "
                         "token for token")
    return Rollouts(
        prompt_index=tuple(range(m)), prompts=tuple(prompts),
        prompt_ids=tuple(tuple(p.prompt_ids) for p in prompts),
        response_ids=tuple(tuple(r) for r in response_ids), response_text=tuple(response_text),
        rollout_logprobs=((),) * m, prefix_len=(0,) * m, finish_reason=("stop",) * m,
        group_id=(-1,) * m, policy_version=-1, expert=(True,) * m, model_mask=masks)


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
