"""Self-Rewarding PPO's reward and CHORD's objective mix.

Self-Rewarding PPO scores a sampled response by how much more likely the SFT
(demonstration-tuned) model finds it than the base model: the log-likelihood
ratio sum_t [log pi_sft(y_t) - log pi_base(y_t)] over the response tokens, a
sequence-level outcome reward placed on the last response token like any other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlft.registry import Registry

# Per-batch normalisers of the sequence rewards [B] over the rows that have a
# response (`active`); inactive rows stay 0.
NormFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SELF_REWARD_NORMS: Registry[NormFn] = Registry("self-reward normalisation")


def _batch_std(r: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Unbiased std over active rows; 0 when fewer than two rows."""
    n = int(active.sum())
    if n < 2:
        return torch.zeros((), dtype=r.dtype, device=r.device)
    return r[active].std(unbiased=True)


@SELF_REWARD_NORMS.register("none")
def _none(r: torch.Tensor, active: torch.Tensor, eps: float) -> torch.Tensor:
    return r


@SELF_REWARD_NORMS.register("batch_std")
def _std(r: torch.Tensor, active: torch.Tensor, eps: float) -> torch.Tensor:
    # Scale only: the sign (SFT prefers it or not) keeps its meaning.
    return r / (_batch_std(r, active) + eps)


@SELF_REWARD_NORMS.register("batch_zscore")
def _zscore(r: torch.Tensor, active: torch.Tensor, eps: float) -> torch.Tensor:
    mean = r[active].mean() if bool(active.any()) else r.new_zeros(())
    return (r - mean) / (_batch_std(r, active) + eps)


def self_reward(sft_logprobs: torch.Tensor, base_logprobs: torch.Tensor,
                response_mask: torch.Tensor, normalize: str = "none", eps: float = 1e-6
                ) -> torch.Tensor:
    """Token rewards [B, L]: each row's sum_t (sft - base) on its last response token.

    `normalize`: "none" | "batch_std" (divide by the batch std of the sequence
    rewards) | "batch_zscore" (subtract the batch mean, then divide). Statistics
    use the rows with at least one response token (unbiased std); rows without
    one get no reward. Returns 0 everywhere except each row's last response token.

    >>> m = torch.tensor([[False, True, True]])
    >>> self_reward(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, -3.0, -1.0]]), m)
    tensor([[0., 0., 1.]])
    """
    if not (sft_logprobs.shape == base_logprobs.shape == response_mask.shape) \
            or sft_logprobs.dim() != 2:
        raise ValueError(f"self_reward: sft_logprobs {tuple(sft_logprobs.shape)}, base_logprobs "
                         f"{tuple(base_logprobs.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must all be the same [B, L]")
    mask = response_mask.bool()
    # Sum in at least fp32: a bf16 sum over a long response loses the reward.
    dtype = torch.promote_types(sft_logprobs.dtype, torch.float32)
    diff = torch.where(mask, (sft_logprobs - base_logprobs).to(dtype), 0.0)  # [B, L]
    seq = diff.sum(-1)  # [B, L] -> [B]
    active = mask.any(-1)  # [B]
    seq = torch.where(active, SELF_REWARD_NORMS.get(normalize)(seq, active, eps), 0.0)
    cols = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, cols, -1).amax(-1)  # [B] index of the last response token
    out = torch.zeros_like(diff)  # [B, L]
    rows = active.nonzero().squeeze(-1)
    out[rows, last[rows]] = seq[rows]
    return out


def chord_combine(rl_loss: torch.Tensor, expert_loss: torch.Tensor, mu: float) -> torch.Tensor:
    """CHORD's objective (1 - mu) * rl_loss + mu * expert_loss, mu in [0, 1].

    Both inputs are already aggregated scalars over their own rows: the RL term
    over sampled rows, the expert term over demonstration rows, picked by the
    batch's `expert_mask` (the learner applies each term to its rows; see
    `LossTermSpec.rows`). `mu` usually follows `schedules.chord_mu`.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"chord_combine: mu must be in [0, 1]; got {mu}")
    return (1.0 - mu) * rl_loss + mu * expert_loss
