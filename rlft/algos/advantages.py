"""Advantage estimators, one signature: (AdvantageInputs, AdvantageParams) -> AdvantageOutput.

Groups are defined by `group_id` values, not positions: samples of a prompt may
sit anywhere in the batch, and groups may differ in size. Outcome estimators
use the sequence score = sum of the row's token rewards over its response.

Conventions shared by every estimator here:
- A row with no response token (an empty completion, or a row the caller
  masked out, e.g. a CHORD demonstration) takes no part in group statistics:
  it has nothing to train and must not shift its group's baseline.
- Group spread uses the unbiased std (n - 1 in the denominator), as verl does
  with `torch.std`; a group with a single active row has no spread and gets 0.
- Batch whitening (reinforce_pp, gae) also uses the unbiased variance over the
  batch's response tokens, with the mean shifted to 0.
- Output is exactly 0 outside `response_mask`.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rlft.algos.base import ADVANTAGES, AdvantageInputs, AdvantageOutput, AdvantageParams
from rlft.types import loss_mask


def _check(x: AdvantageInputs) -> None:
    """Shape checks that name the field, so a mis-collated batch fails here."""
    if x.token_rewards.dim() != 2:
        raise ValueError(f"token_rewards must be [B, L]; got shape {tuple(x.token_rewards.shape)}")
    if x.response_mask.shape != x.token_rewards.shape:
        raise ValueError(f"response_mask shape {tuple(x.response_mask.shape)} must equal "
                         f"token_rewards shape {tuple(x.token_rewards.shape)}")
    if x.response_mask.dtype != torch.bool:
        raise ValueError(f"response_mask must be bool, got {x.response_mask.dtype}")
    if x.group_id.shape != x.token_rewards.shape[:1]:
        raise ValueError(f"group_id must be [B]={tuple(x.token_rewards.shape[:1])}; "
                         f"got {tuple(x.group_id.shape)}")
    if x.values is not None and x.values.shape != x.token_rewards.shape:
        raise ValueError(f"values shape {tuple(x.values.shape)} must equal token_rewards shape "
                         f"{tuple(x.token_rewards.shape)}")


def _scores(x: AdvantageInputs) -> torch.Tensor:
    return torch.where(x.response_mask, x.token_rewards, 0.0).sum(-1)  # [B, L] -> [B]


def _group_stats(scores: torch.Tensor, group_id: torch.Tensor, active: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (group size, group sum, group mean, unbiased group std) over active rows.

    One pass of index_add per statistic: no Python loop over groups.
    """
    _, inv = torch.unique(group_id, return_inverse=True)  # [B] dense group index
    k = int(inv.max()) + 1 if inv.numel() else 0
    w = active.to(scores.dtype)  # [B] 1 for rows that take part
    zeros = torch.zeros(k, dtype=scores.dtype, device=scores.device)  # [K]
    count = zeros.index_add(0, inv, w)
    total = zeros.index_add(0, inv, scores * w)
    mean = total / count.clamp(min=1)
    sq = zeros.index_add(0, inv, w * (scores - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return count[inv], total[inv], mean[inv], std[inv]  # each [K] -> [B]


def _outcome(x: AdvantageInputs, adv_seq: torch.Tensor) -> AdvantageOutput:
    out = torch.where(x.response_mask, adv_seq[:, None], 0.0)  # [B] -> [B, L]
    return AdvantageOutput(advantages=out, returns=out)


@ADVANTAGES.register("grpo")
def grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """(score - group mean) / (group std + eps); a group of one gets 0.

    >>> x = AdvantageInputs(torch.tensor([[1.0], [0.0]]), torch.tensor([[True], [True]]),
    ...                     torch.tensor([7, 7]))
    >>> grpo(x, AdvantageParams(eps=0.0)).advantages.flatten().tolist()
    [0.7071067690849304, -0.7071067690849304]
    """
    _check(x)
    s = _scores(x)
    active = x.response_mask.any(-1)
    count, _, mean, std = _group_stats(s, x.group_id, active)
    adv = torch.where(active & (count > 1), (s - mean) / (std + p.eps), 0.0)
    return _outcome(x, adv)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Dr.GRPO: score - group mean, no std division (removes the difficulty bias)."""
    _check(x)
    s = _scores(x)
    active = x.response_mask.any(-1)
    count, _, mean, _ = _group_stats(s, x.group_id, active)
    # A lone row equals its own mean already; the `where` keeps it exactly 0.
    return _outcome(x, torch.where(active & (count > 1), s - mean, 0.0))


@ADVANTAGES.register("rloo")
def rloo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Leave-one-out baseline: score - mean of the group's other samples."""
    _check(x)
    s = _scores(x)
    active = x.response_mask.any(-1)
    count, total, _, _ = _group_stats(s, x.group_id, active)
    others = (total - s) / (count - 1).clamp(min=1)
    return _outcome(x, torch.where(active & (count > 1), s - others, 0.0))


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++-baseline (Hu et al., 2025; verl's
    `compute_reinforce_plus_plus_baseline_outcome_advantage`): the sequence
    score (token rewards summed, a KL in the reward included) minus its group
    mean, then whitened over the batch's response tokens. A group of one keeps
    its raw score (mean 0), as verl does."""
    _check(x)
    s = _scores(x)
    active = x.response_mask.any(-1)
    count, _, mean, _ = _group_stats(s, x.group_id, active)
    centred = torch.where(count > 1, s - mean, s)  # [B]
    tokens = torch.where(x.response_mask, centred[:, None], 0.0)  # [B] -> [B, L]
    out = _whiten(tokens, x.response_mask, p.eps)
    return AdvantageOutput(out, out)


@ADVANTAGES.register("prefix_rft")
def prefix_rft(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Prefix-RFT (Huang et al., 2025, arXiv 2507.01679; the authors' verl
    recipe `prefix_rft/core_algos.py`): forced prefix tokens get their own advantage.

    - Sampled tokens: the `p.base` estimator, over groups of `group_id` split
      into prefixed and plain rows when `p.split_prefix` (a prefixed sample is
      compared with the samples that share its prefix).
    - Forced tokens of a prefixed row i of group g: (s_i - mean of g's plain
      rows' scores) / k_g, k_g the prefixed rows of g (they share one prefix).
      The shared prefix thus gets the push mean(prefixed) - mean(plain): up
      when continuing the demonstration beats the policy's own samples, down
      when it does worse. Without plain rows in g it gets 0.

    Unlike the recipe, a prefixed group of one gives its sampled tokens 0 (the
    convention of every estimator here), not its raw score.
    """
    _check(x)
    if p.base in ("prefix_rft", "gae"):
        raise ValueError(f"prefix_rft's base estimator must be critic-free and not itself; "
                         f"got {p.base!r} (choose grpo, dr_grpo, rloo, reinforce_pp)")
    forced = loss_mask(x.response_mask, x.prefix_mask, tokens="prefix")  # [B, L]
    has = forced.any(-1)  # [B]
    groups = x.group_id * 2 + has.long() if p.split_prefix else x.group_id
    out = ADVANTAGES.get(p.base)(replace(x, group_id=groups), p)
    s = _scores(x)
    active = x.response_mask.any(-1)
    n_plain, _, plain_mean, _ = _group_stats(s, x.group_id, active & ~has)
    n_prefixed, _, _, _ = _group_stats(s, x.group_id, active & has)
    adv = torch.where(has & (n_plain > 0), (s - plain_mean) / n_prefixed.clamp(min=1), 0.0)
    return AdvantageOutput(torch.where(forced, adv[:, None], out.advantages),  # [B] -> [B, L]
                           torch.where(forced, adv[:, None], out.returns))


def _reverse_scan(x: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """y_t = x_t + factor * y_next over masked positions, right to left.

    `y_next` is y at the row's next masked position (0 after the last), so a
    masked-out gap inside a response (e.g. tool output) passes the running sum
    through unchanged instead of resetting it. One step per column, [B] wide:
    the recursion is sequential in t, not in rows.
    """
    out = torch.zeros_like(x)  # [B, L]
    running = torch.zeros_like(x[:, 0])  # [B]
    for t in range(x.shape[1] - 1, -1, -1):
        running = torch.where(mask[:, t], x[:, t] + factor * running, running)
        out[:, t] = running
    return torch.where(mask, out, 0.0)


def _whiten(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / (std + eps) over the masked entries of the whole batch; 0 elsewhere."""
    n = mask.sum().clamp(min=1)
    mean = torch.where(mask, x, 0.0).sum() / n
    var = torch.where(mask, (x - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    return torch.where(mask, (x - mean) / (var.sqrt() + eps), 0.0)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++: discounted return-to-go, whitened over the batch's response tokens.

    Groups are not used: the baseline is the batch mean. `returns` keeps the
    raw (unwhitened) return-to-go.
    """
    _check(x)
    ret = _reverse_scan(x.token_rewards, x.response_mask, p.gamma)  # [B, L]
    return AdvantageOutput(_whiten(ret, x.response_mask, p.eps), ret)


@ADVANTAGES.register("gae")
def gae(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Generalised advantage estimation over response tokens; returns = A + V.

    delta_t = r_t + gamma * V_next - V_t, where V_next is the value at the row's
    next response token and 0 after its last (the episode ends there);
    A_t = delta_t + gamma * lam * A_next. `returns` (the value targets) are
    A + V before whitening; the advantages are then whitened over the batch's
    response tokens (PPO practice), so their scale does not follow the reward's.
    """
    if x.values is None:
        raise ValueError("gae needs `values` from a critic: PPO with GAE must run a critic "
                         "(or choose a critic-free estimator such as grpo or reinforce_pp)")
    _check(x)
    mask = x.response_mask
    values = torch.where(mask, x.values.to(x.token_rewards.dtype), 0.0)  # [B, L]
    B, L = mask.shape
    adv = torch.zeros_like(values)  # [B, L]
    last = torch.zeros_like(values[:, 0])  # [B] A at the next response token
    next_v = torch.zeros_like(values[:, 0])  # [B] V at the next response token
    for t in range(L - 1, -1, -1):
        m = mask[:, t]
        delta = x.token_rewards[:, t] + p.gamma * next_v - values[:, t]
        last = torch.where(m, delta + p.gamma * p.lam * last, last)
        next_v = torch.where(m, values[:, t], next_v)
        adv[:, t] = last
    adv = torch.where(mask, adv, 0.0)
    returns = torch.where(mask, adv + values, 0.0)
    return AdvantageOutput(_whiten(adv, mask, p.eps), returns)
