"""Self-Rewarding PPO: PPO with a critic whose reward needs demonstrations only.

- pi_SFT is the policy fine-tuned on the rows' `demonstration`s (`rlft sft`,
  or, with `algo.self_reward.sft_model` unset, a stage this spec runs first
  into `<run folder>/sft`); pi_base is the model it was tuned from.
- A rollout's reward is sum_t [log pi_SFT(y_t) - log pi_base(y_t)] over its
  response tokens: how much more the SFT model, relative to the base, likes
  the response. A reward actor holding both models frozen computes it
  (workers/self_reward.py, `reward_source="self_reward"`); no reward function
  and no labels are used.
- `algo.self_reward.norm` rescales it per batch: none | token_mean (divided by
  the response's token count, so length is not rewarded by itself) |
  group_zscore (within each prompt's samples) | batch_zscore | batch_std (scale
  only). One registry, `SELF_REWARD_NORMS`, holds them.
- Everything else is PPO (rlft/algos/ppo.py); with `init_from_sft` (default)
  the policy, critic and KL reference start from pi_SFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from rlft.algos.contract import Algorithm, Stage
from rlft.algos.ppo import ppo_family
from rlft.registry import Registry

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config

SFT_FOLDER = "sft"

# Per-batch normalisers of the sequence rewards: (raw [B], response mask
# [B, L] bool, group ids [B], eps) -> rewards [B]; rows without a response
# token get 0 and take no part in statistics.
NormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
SELF_REWARD_NORMS: Registry[NormFn] = Registry("self-reward normalisation")


def _zscore(r: torch.Tensor, inv: torch.Tensor, active: torch.Tensor, eps: float,
            center: bool = True) -> torch.Tensor:
    """(r - mean) / (unbiased std + eps) within each index of `inv` over active
    rows; a set of one active row gets 0 (no spread to compare it with).
    `center=False`: r / (std + eps), the std 0 for a set of one."""
    k = int(inv.max()) + 1 if inv.numel() else 0
    w = active.to(r.dtype)  # [B]
    zeros = torch.zeros(k, dtype=r.dtype, device=r.device)  # [K]
    count = zeros.index_add(0, inv, w)
    mean = zeros.index_add(0, inv, r * w) / count.clamp(min=1)
    var = zeros.index_add(0, inv, w * (r - mean[inv]) ** 2) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), 0.0)[inv]  # [K] -> [B]
    if not center:
        return torch.where(active, r / (std + eps), 0.0)
    return torch.where(active & (count[inv] > 1), (r - mean[inv]) / (std + eps), 0.0)


@SELF_REWARD_NORMS.register("none")
def _none(raw: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor, eps: float
          ) -> torch.Tensor:
    return raw


@SELF_REWARD_NORMS.register("token_mean")
def _token_mean(raw: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor, eps: float
                ) -> torch.Tensor:
    # Divided by the response's token count, so length is not rewarded by itself.
    return raw / mask.sum(-1).clamp(min=1)


@SELF_REWARD_NORMS.register("group_zscore")
def _group_zscore(raw: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor, eps: float
                  ) -> torch.Tensor:
    return _zscore(raw, torch.unique(group_id, return_inverse=True)[1], mask.any(-1), eps)


@SELF_REWARD_NORMS.register("batch_zscore")
def _batch_zscore(raw: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor, eps: float
                  ) -> torch.Tensor:
    return _zscore(raw, torch.zeros_like(group_id), mask.any(-1), eps)


@SELF_REWARD_NORMS.register("batch_std")
def _batch_std(raw: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor, eps: float
               ) -> torch.Tensor:
    # Scale only: the sign (SFT prefers it or not) keeps its meaning.
    return _zscore(raw, torch.zeros_like(group_id), mask.any(-1), eps, center=False)


def self_reward(sft_logprobs: torch.Tensor, base_logprobs: torch.Tensor,
                response_mask: torch.Tensor, normalize: str = "none", eps: float = 1e-6
                ) -> torch.Tensor:
    """Token rewards [B, L]: each row's sequence reward (`sequence_rewards` with
    the whole batch as one group) on its last response token, 0 elsewhere.

    >>> m = torch.tensor([[False, True, True]])
    >>> self_reward(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, -3.0, -1.0]]), m)
    tensor([[0., 0., 1.]])
    """
    mask = response_mask.bool()
    if mask.dim() != 2:
        raise ValueError(f"self_reward: response_mask must be [B, L]; got {tuple(mask.shape)}")
    group = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    seq, _ = sequence_rewards(sft_logprobs, base_logprobs, mask, group, normalize, eps)
    cols = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, cols, -1).amax(-1)  # [B] index of the last response token
    out = torch.zeros(mask.shape, dtype=seq.dtype, device=seq.device)  # [B, L]
    rows = mask.any(-1).nonzero().squeeze(-1)
    out[rows, last[rows]] = seq[rows]
    return out


def sequence_rewards(sft_logprobs: torch.Tensor, base_logprobs: torch.Tensor,
                     response_mask: torch.Tensor, group_id: torch.Tensor, norm: str = "none",
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B] after `norm`, raw log-ratio sums [B]) from [B, L] token log-probs.

    Rows without a response token get 0 and take no part in statistics.

    >>> m = torch.tensor([[False, True, True], [False, True, False]])
    >>> sft, base = torch.tensor([[0., -1., -1.], [0., 0., 0.]]), torch.full((2, 3), -2.)
    >>> [r.tolist() for r in sequence_rewards(sft, base, m, torch.tensor([0, 0]), "token_mean")]
    [[1.0, 2.0], [2.0, 2.0]]
    """
    fn = SELF_REWARD_NORMS.get(norm)  # a miss lists the choices
    if not (sft_logprobs.shape == base_logprobs.shape == response_mask.shape) \
            or sft_logprobs.dim() != 2:
        raise ValueError(f"self_reward: sft_logprobs {tuple(sft_logprobs.shape)}, base_logprobs "
                         f"{tuple(base_logprobs.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must all be the same [B, L]")
    if tuple(group_id.shape) != tuple(response_mask.shape[:1]):
        raise ValueError(f"group_id must be [B]={tuple(response_mask.shape[:1])}; got "
                         f"{tuple(group_id.shape)}")
    mask = response_mask.bool()
    # Sum in at least fp32: a bf16 sum over a long response loses the reward.
    dtype = torch.promote_types(sft_logprobs.dtype, torch.float32)
    raw = torch.where(mask, (sft_logprobs - base_logprobs).to(dtype), 0.0).sum(-1)  # [B]
    return torch.where(mask.any(-1), fn(raw, mask, group_id, eps), 0.0), raw


def _with_sft(cfg: Config, algo: Algorithm, sft: str) -> Algorithm:
    args = {**algo.reward_args, "sft_model": sft}
    policy = sft if cfg.algo.self_reward.init_from_sft else None
    return replace(algo, reward_args=args, policy_model=policy, stages=())


def build(cfg: Config) -> Algorithm:
    s = cfg.algo.self_reward
    algo = replace(
        ppo_family(cfg, "self_rewarding_ppo"), reward_source="self_reward",
        reward_args={"sft_model": None, "base_model": s.base_model or cfg.model.name,
                     "norm": s.norm, "eps": cfg.algo.eps},
        min_group_size=2 if s.norm == "group_zscore" else 1)
    if s.sft_model:
        return _with_sft(cfg, algo, s.sft_model)
    # No SFT model given: the run fine-tunes one into <run folder>/sft first.
    then = lambda algo, folder: _with_sft(cfg, algo, str(folder))  # noqa: E731
    return replace(algo, stages=(Stage("sft", SFT_FOLDER, then),))
