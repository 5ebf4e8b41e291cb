"""Loss terms: (LossInputs, **params) -> LossOutput with a per-token loss [B, L].

Terms do not mask or reduce; `rlft.algos.aggregation.aggregate` does that once,
with global token counts. Metrics are per-token too and get token-averaged.
"""

from __future__ import annotations

import torch

from rlft.algos.base import LOSSES, LossInputs, LossOutput
from rlft.algos.mismatch import rollout_is_weights
from rlft.types import loss_mask


def _need(x: LossInputs, name: str, term: str, why: str) -> torch.Tensor:
    value = getattr(x, name)
    if value is None:
        raise ValueError(f"{term} needs `{name}` in the batch: {why}")
    return value


@LOSSES.register("ppo_clip")
def ppo_clip(x: LossInputs, clip_low: float = 0.2, clip_high: float = 0.2,
             dual_clip: float | None = None, log_ratio_clamp: float = 20.0,
             rollout_is: str = "none", rollout_is_level: str = "token",
             rollout_is_cap: float = 2.0, rollout_is_low: float = 0.5,
             rollout_is_high: float = 2.0) -> LossOutput:
    """Clipped surrogate with clip-higher (eps_low != eps_high) and dual-clip.

    loss = max(-A*r, -A*clip(r, 1-eps_low, 1+eps_high)); with dual-clip c > 1,
    tokens with A < 0 are further capped at -c*A so a huge ratio on a bad token
    cannot dominate the update (Ye et al., 2020). Without `old_logprobs` (one
    update per batch) the ratio is exactly 1 in value and the gradient is the
    plain policy gradient. The log-ratio is clamped before `exp` so a stale or
    masked position cannot overflow to inf.

    The ratio is 1 at the start of each batch's first update: the clip ranges
    (clip-higher included) only bind from the second update on the same batch
    (train.epochs x train.minibatches > 1); the dual clip binds at once.

    Rollout correction (`rollout_is` "tis" or "mis", see rlft/algos/mismatch.py):
    each sampled token's loss is multiplied by the detached weight built from
    pi_old / pi_rollout (`rollout_logprobs`), per token or per sequence
    (`rollout_is_level`); forced prefix tokens keep weight 1. A token MIS drops
    keeps its place in the normaliser (its loss is 0).

    Metrics: `clip_frac` (1 where clipping zeroed the token's gradient, either
    clip), `dual_clip_frac` (1 where the dual clip was the active bound),
    `ratio`, `approx_kl` (k2 = 0.5*(log r)^2 between old and current policy);
    with a correction, `is_weight` and `is_dropped` (weight 0).
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"ppo_clip: clip_low and clip_high must be >= 0; got {clip_low}, "
                         f"{clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_clip: dual_clip must be > 1 (e.g. 3.0) or None; got {dual_clip}")
    old = x.old_logprobs if x.old_logprobs is not None else x.logprobs.detach()
    log_ratio = (x.logprobs - old).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    a = x.advantages
    surr1 = -a * ratio
    surr2 = -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(surr1, surr2)
    clipped = surr2 > surr1
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        bound = -a * dual_clip
        dual = (a < 0) & (bound < loss)
        loss = torch.where(dual, bound, loss)
    metrics = {"clip_frac": (clipped | dual).float(), "dual_clip_frac": dual.float(),
               "ratio": ratio.detach(), "approx_kl": 0.5 * log_ratio.detach() ** 2}
    if rollout_is != "none":
        rollout = _need(x, "rollout_logprobs", "ppo_clip's rollout correction",
                        "the rollout engine must return log-probs")
        # forced tokens were not drawn from pi_rollout
        sampled = loss_mask(x.response_mask, x.prefix_mask, tokens="sampled")
        w = rollout_is_weights(old, rollout, sampled, rollout_is, rollout_is_level,
                               rollout_is_cap, rollout_is_low, rollout_is_high)
        loss = w * loss
        metrics.update(is_weight=w, is_dropped=(w == 0).float())
    return LossOutput(loss, metrics)


@LOSSES.register("sft_ce")
def sft_ce(x: LossInputs) -> LossOutput:
    """Negative log-likelihood of the given tokens (supervised fine-tuning)."""
    return LossOutput(-x.logprobs)


@LOSSES.register("chord_expert")
def chord_expert(x: LossInputs, phi: bool = True, cutoff_prob: float | None = None) -> LossOutput:
    """CHORD's token-weighted expert term: -w * log p, w = p(1-p) with p detached.

    phi = p(1-p) down-weights tokens the policy already predicts (p near 1) and
    tokens it finds implausible (p near 0), so demonstrations shape rather than
    overwrite the policy. `phi=False` gives plain SFT (w = 1). With
    `cutoff_prob` set, tokens the policy already assigns p > cutoff_prob get
    w = 0 (strictly greater: p == cutoff keeps its weight); the cutoff applies
    with or without phi. Metric `phi`: the weight used per token.
    """
    if cutoff_prob is not None and not 0.0 < cutoff_prob <= 1.0:
        raise ValueError(f"chord_expert: cutoff_prob must be in (0, 1] or None; got {cutoff_prob}")
    p = torch.exp(x.logprobs.detach())
    weight = p * (1 - p) if phi else torch.ones_like(p)
    if cutoff_prob is not None:
        weight = torch.where(p > cutoff_prob, 0.0, weight)
    return LossOutput(-weight * x.logprobs, {"phi": weight})


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    Sign convention (Schulman, "Approximating KL divergence"): with
    log r = log pi - log pi_ref (the log-ratio of the sampling policy to the
    reference), k1 = log r (unbiased, can be negative), k2 = (log r)^2 / 2
    (biased, low variance, >= 0), k3 = exp(-log r) - 1 + log r (unbiased, >= 0).
    Also used for a KL penalty in the reward (then typically k1).
    """
    log_r = logprobs - ref_logprobs
    if estimator == "k1":
        return log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.exp(-log_r) - 1 + log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choices: {', '.join(KL_ESTIMATORS)}")


@LOSSES.register("kl")
def kl(x: LossInputs, estimator: str = "k3") -> LossOutput:
    """KL(pi || pi_ref) penalty as a loss term; metric `kl` is the per-token estimate."""
    ref = _need(x, "ref_logprobs", "kl", "set algo.kl_coef > 0 so a reference model is loaded")
    value = kl_penalty(x.logprobs, ref, estimator)
    return LossOutput(value, {"kl": value.detach()})


@LOSSES.register("value_clip")
def value_clip(x: LossInputs, clip: float = 0.2) -> LossOutput:
    """PPO value loss 0.5 * max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2).

    Without `old_values` the loss is the unclipped 0.5 * (v - R)^2. Metrics:
    `value_error` = (v - R)^2, `value_clip_frac` = 1 where the clipped branch
    is the larger (its gradient is then zero).
    """
    v = _need(x, "values", "value_clip", "the critic must produce values (PPO needs a critic)")
    ret = _need(x, "returns", "value_clip", "run an estimator that produces returns (gae)")
    loss = (v - ret) ** 2
    clipped = torch.zeros_like(loss, dtype=torch.bool)
    if x.old_values is not None:
        v_clip = x.old_values + (v - x.old_values).clamp(-clip, clip)
        loss_clip = (v_clip - ret) ** 2
        clipped = loss_clip > loss
        loss = torch.maximum(loss, loss_clip)
    return LossOutput(0.5 * loss, {"value_error": (v.detach() - ret) ** 2,
                                   "value_clip_frac": clipped.float()})


@LOSSES.register("entropy_bonus")
def entropy_bonus(x: LossInputs) -> LossOutput:
    """-entropy: minimising it raises entropy (the term's weight is the entropy coefficient)."""
    ent = _need(x, "entropy", "entropy_bonus", "the learner must compute entropy")
    return LossOutput(-ent)
