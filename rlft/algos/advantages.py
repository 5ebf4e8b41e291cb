"""Advantage estimators, one signature: (AdvantageInputs, AdvantageParams) -> AdvantageOutput.

Groups are defined by `group_id` values, not positions: samples of a prompt may
sit anywhere in the batch, and groups may differ in size. Outcome estimators
use the sequence score = sum of the row's token rewards.
"""

from __future__ import annotations

import torch

from rlft.algos.base import ADVANTAGES, AdvantageInputs, AdvantageOutput, AdvantageParams


def _scores(x: AdvantageInputs) -> torch.Tensor:
    return (x.token_rewards * x.response_mask).sum(-1)  # [B]


def _group_stats(scores: torch.Tensor, group_id: torch.Tensor):
    """Per-row group size, sum and (unbiased) std, vectorised with index_add."""
    _, inv = torch.unique(group_id, return_inverse=True)  # [B] dense group index
    k = int(inv.max()) + 1
    count = torch.zeros(k, dtype=scores.dtype).index_add_(0, inv, torch.ones_like(scores))
    total = torch.zeros(k, dtype=scores.dtype).index_add_(0, inv, scores)
    mean = total / count
    sq = torch.zeros(k, dtype=scores.dtype).index_add_(0, inv, (scores - mean[inv]) ** 2)
    # Unbiased (n-1) like torch.std; a group of one has no spread.
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return count[inv], total[inv], mean[inv], std[inv]


def _broadcast(adv_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return adv_seq[:, None] * mask  # [B] -> [B, L]


@ADVANTAGES.register("grpo")
def grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """(score - group mean) / (group std + eps); a group of one gets 0."""
    s = _scores(x)
    count, _, mean, std = _group_stats(s, x.group_id)
    adv = torch.where(count > 1, (s - mean) / (std + p.eps), torch.zeros_like(s))
    out = _broadcast(adv, x.response_mask)
    return AdvantageOutput(out, out)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Dr.GRPO: score - group mean, no std division (removes difficulty bias)."""
    s = _scores(x)
    _, _, mean, _ = _group_stats(s, x.group_id)
    out = _broadcast(s - mean, x.response_mask)
    return AdvantageOutput(out, out)


@ADVANTAGES.register("rloo")
def rloo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Leave-one-out baseline: score - mean of the group's other samples."""
    s = _scores(x)
    count, total, _, _ = _group_stats(s, x.group_id)
    others = (total - s) / (count - 1).clamp(min=1)
    adv = torch.where(count > 1, s - others, torch.zeros_like(s))
    out = _broadcast(adv, x.response_mask)
    return AdvantageOutput(out, out)


def _returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)  # [B, L]
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def _whiten(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + eps) * mask


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++: discounted return-to-go, whitened over the batch's response tokens."""
    mask = x.response_mask.to(x.token_rewards.dtype)
    ret = _returns_to_go(x.token_rewards * mask, mask, p.gamma)
    return AdvantageOutput(_whiten(ret, mask, p.eps), ret)


@ADVANTAGES.register("gae")
def gae(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Generalised advantage estimation over response tokens; returns = A + V.

    Advantages are whitened over the batch's response tokens (PPO practice);
    returns keep the raw scale for the value loss.
    """
    if x.values is None:
        raise ValueError("gae needs `values` from a critic: PPO with GAE must run a critic "
                         "(or choose an outcome estimator such as grpo)")
    mask = x.response_mask.to(x.token_rewards.dtype)
    values = x.values * mask
    B, L = mask.shape
    adv = torch.zeros(B, L, dtype=values.dtype)
    last = torch.zeros(B, dtype=values.dtype)
    next_v = torch.zeros(B, dtype=values.dtype)
    for t in range(L - 1, -1, -1):
        m = mask[:, t]
        delta = x.token_rewards[:, t] + p.gamma * next_v - values[:, t]
        last = torch.where(m > 0, delta + p.gamma * p.lam * last, last)
        adv[:, t] = last * m
        next_v = torch.where(m > 0, values[:, t], next_v)
    returns = (adv + values) * mask
    return AdvantageOutput(_whiten(adv, mask, p.eps), returns)
