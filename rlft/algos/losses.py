"""Loss terms: (LossInputs, **params) -> LossOutput with a per-token loss [B, L].

Terms do not mask or reduce; `rlft.algos.aggregation.aggregate` does that once,
with global token counts. Metrics are per-token too and get token-averaged.
"""

from __future__ import annotations

import torch

from rlft.algos.base import LOSSES, LossInputs, LossOutput


def _need(x: LossInputs, name: str, term: str, why: str) -> torch.Tensor:
    value = getattr(x, name)
    if value is None:
        raise ValueError(f"{term} needs `{name}` in the batch: {why}")
    return value


@LOSSES.register("ppo_clip")
def ppo_clip(x: LossInputs, clip_low: float = 0.2, clip_high: float = 0.2,
             dual_clip: float | None = None, log_ratio_clamp: float = 20.0) -> LossOutput:
    """Clipped surrogate with clip-higher (eps_low != eps_high) and dual-clip.

    Without `old_logprobs` (one update per batch) the ratio is exactly 1 in
    value and the gradient is the policy gradient.
    """
    old = x.old_logprobs if x.old_logprobs is not None else x.logprobs.detach()
    log_ratio = (x.logprobs - old).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    a = x.advantages
    surr1 = -a * ratio
    surr2 = -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(surr1, surr2)
    clipped = (surr2 > surr1).float()
    if dual_clip is not None:
        # Dual-clip (Ye et al.): for A < 0, bound the loss by -c*A so a huge
        # ratio on a bad token cannot dominate the update.
        capped = torch.minimum(loss, -a * dual_clip)
        loss = torch.where(a < 0, capped, loss)
        clipped = torch.where((a < 0) & (capped < torch.maximum(surr1, surr2)),
                              torch.ones_like(clipped), clipped)
    approx_kl = 0.5 * (log_ratio.detach() ** 2)
    return LossOutput(loss, {"clip_frac": clipped, "ratio": ratio.detach(),
                             "approx_kl": approx_kl})


@LOSSES.register("sft_ce")
def sft_ce(x: LossInputs) -> LossOutput:
    """Negative log-likelihood of the given tokens (supervised fine-tuning)."""
    return LossOutput(-x.logprobs)


@LOSSES.register("chord_expert")
def chord_expert(x: LossInputs, phi: bool = True, cutoff_prob: float | None = None) -> LossOutput:
    """CHORD's expert term: -phi * log p with phi = p(1-p), p detached.

    phi down-weights tokens the policy already predicts (p near 1) and tokens it
    finds implausible (p near 0), so demonstrations shape rather than overwrite
    the policy. Tokens with p above `cutoff_prob` get weight 0.
    """
    p = torch.exp(x.logprobs.detach())
    weight = p * (1 - p) if phi else torch.ones_like(p)
    if cutoff_prob is not None:
        weight = torch.where(p > cutoff_prob, torch.zeros_like(weight), weight)
    return LossOutput(-weight * x.logprobs, {"phi": weight})


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    With log r = log pi - log pi_ref (Schulman, "Approximating KL divergence"):
    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r (unbiased, >= 0).
    """
    log_r = logprobs - ref_logprobs
    if estimator == "k1":
        return log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.exp(-log_r) - 1 + log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choices: k1, k2, k3")


@LOSSES.register("kl")
def kl(x: LossInputs, estimator: str = "k3") -> LossOutput:
    ref = _need(x, "ref_logprobs", "kl", "set algo.kl_coef > 0 so a reference model is loaded")
    value = kl_penalty(x.logprobs, ref, estimator)
    return LossOutput(value, {"kl": value.detach()})


@LOSSES.register("value_clip")
def value_clip(x: LossInputs, clip: float = 0.2) -> LossOutput:
    """PPO value loss 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2)."""
    v = _need(x, "values", "value_clip", "the critic must produce values")
    ret = _need(x, "returns", "value_clip", "run an estimator that produces returns (gae)")
    loss = (v - ret) ** 2
    if x.old_values is not None:
        clipped = x.old_values + (v - x.old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - ret) ** 2)
    return LossOutput(0.5 * loss, {"value_error": (v.detach() - ret) ** 2})


@LOSSES.register("entropy_bonus")
def entropy_bonus(x: LossInputs) -> LossOutput:
    """-entropy: minimising it raises entropy (weight = entropy coefficient)."""
    ent = _need(x, "entropy", "entropy_bonus", "the learner must compute entropy")
    return LossOutput(-ent)
