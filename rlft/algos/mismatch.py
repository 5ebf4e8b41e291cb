"""Rollout-vs-learner mismatch: how far the engine's log-probs of a sample are
from the learner's, and the importance weights that correct for it.

The rollout engine (vLLM kernels, another dtype, other batch shapes) samples
from pi_rollout, which is close to, but not, the learner's pi_old at the same
weights. Uncorrected, the policy gradient is then slightly off-policy, a bias
that grows with the model (verl's and prime-rl's "rollout correction").

Only tokens the engine sampled count: forced prefix tokens (Prefix-RFT) were
never drawn from pi_rollout (and vLLM scores them without temperature), and
demonstration rows (CHORD) have no rollout log-probs at all.

Corrections (`rollout_is_weights`), per token or per sequence, with
w = pi_old / pi_rollout (detached):
- "tis": truncated importance sampling, weight min(w, cap) (Yao et al., 2025,
  "Your efficient RL framework secretly brings you off-policy RL training").
- "mis": masked importance sampling, weight 1 where low <= w <= high and 0
  (the token or the whole sequence dropped) elsewhere.
"""

from __future__ import annotations

import torch

RATIO_BAND = (0.5, 2.0)  # mismatch/ratio_out_frac: tokens whose pi_learner/pi_rollout leaves it
CORRECTIONS = ("none", "tis", "mis")
LEVELS = ("token", "sequence")


def mismatch_sums(rollout_logprobs: torch.Tensor, learner_logprobs: torch.Tensor,
                  mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the masked tokens (divide by `mismatch/tokens` after summing shards).

    `logprob_abs_diff`: |log p_rollout - log p_learner|; `kl`: k3 estimate of
    KL(pi_rollout || pi_learner) from the rollout's samples, exp(d) - 1 - d with
    d = log p_learner - log p_rollout (unbiased, >= 0); `ratio_out_frac`:
    tokens with p_learner / p_rollout outside RATIO_BAND.

    >>> s = mismatch_sums(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -1.0]]),
    ...                   torch.tensor([[True, True]]))
    >>> {k: round(float(v), 4) for k, v in s.items()}
    {'mismatch/logprob_abs_diff': 1.0, 'mismatch/kl': 0.7183, 'mismatch/ratio_out_frac': 1.0, 'mismatch/tokens': 2.0}
    """
    mask = mask.bool()
    d = torch.where(mask, learner_logprobs.detach().float() - rollout_logprobs.float(), 0.0)
    lo, hi = RATIO_BAND
    ratio = torch.exp(d)
    out = (ratio < lo) | (ratio > hi)
    return {"mismatch/logprob_abs_diff": d.abs().sum(),
            "mismatch/kl": torch.where(mask, ratio - 1 - d, 0.0).sum(),
            "mismatch/ratio_out_frac": (out & mask).float().sum(),
            "mismatch/tokens": mask.float().sum()}


def mismatch_means(metrics: dict[str, float]) -> dict[str, float]:
    """The summed figures of `mismatch_sums` divided by their token count
    (removed); metrics without it are returned unchanged."""
    out = dict(metrics)
    tokens = out.pop("mismatch/tokens", None)
    if tokens is None:
        return out
    for key in ("mismatch/logprob_abs_diff", "mismatch/kl", "mismatch/ratio_out_frac"):
        if key in out:
            out[key] = out[key] / max(tokens, 1.0)
    return out


def rollout_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                       mask: torch.Tensor, mode: str, level: str = "token", cap: float = 2.0,
                       low: float = 0.5, high: float = 2.0) -> torch.Tensor:
    """[B, L] detached importance weights (1 outside `mask`, the sampled tokens).

    level "token": w_t = pi_old(t) / pi_rollout(t); "sequence": one weight per
    row, the product of its tokens' w_t. mode "tis": min(w, cap); "mis": 1 if
    low <= w <= high else 0; "none": 1.

    >>> old, ro = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -1.1]])
    >>> m = torch.tensor([[True, True]])
    >>> rollout_is_weights(old, ro, m, "tis", cap=2.0).tolist()
    [[2.0, 1.1051709651947021]]
    >>> rollout_is_weights(old, ro, m, "mis", "sequence").tolist()
    [[0.0, 0.0]]
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"rollout correction must be one of {', '.join(CORRECTIONS)}; "
                         f"got {mode!r}")
    if level not in LEVELS:
        raise ValueError(f"rollout correction level must be one of {', '.join(LEVELS)}; "
                         f"got {level!r}")
    mask = mask.bool()
    dtype = torch.promote_types(old_logprobs.dtype, torch.float32)  # at least fp32
    ones = torch.ones_like(old_logprobs, dtype=dtype)
    if mode == "none":
        return ones
    log_w = torch.where(mask, old_logprobs.detach().to(dtype) - rollout_logprobs.to(dtype), 0.0)
    if level == "sequence":  # [B, L] -> [B] -> [B, L]
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
    log_w = log_w.clamp(-20.0, 20.0)  # exp stays finite; any such weight is capped or dropped
    w = torch.exp(log_w)
    if mode == "tis":
        w = w.clamp(max=cap)
    else:
        w = ((w >= low) & (w <= high)).to(dtype)
    return torch.where(mask, w, ones)
