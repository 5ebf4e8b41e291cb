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
  group_zscore (within each prompt's samples) | batch_zscore.
- Everything else is PPO (rlft/algos/ppo.py); with `init_from_sft` (default)
  the policy, critic and KL reference start from pi_SFT.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlft.algos.ppo import ppo_fields
from rlft.algos.self_reward import self_reward
from rlft.algos.spec import ALGORITHMS, Algorithm

log = logging.getLogger("rlft")

NORMS = ("none", "token_mean", "group_zscore", "batch_zscore")
SFT_FOLDER = "sft"


def _zscore(r: torch.Tensor, inv: torch.Tensor, active: torch.Tensor, eps: float
            ) -> torch.Tensor:
    """(r - mean) / (unbiased std + eps) within each index of `inv` over active rows;
    a set of one active row gets 0 (no spread to compare it with)."""
    k = int(inv.max()) + 1 if inv.numel() else 0
    w = active.to(r.dtype)  # [B]
    zeros = torch.zeros(k, dtype=r.dtype, device=r.device)  # [K]
    count = zeros.index_add(0, inv, w)
    mean = zeros.index_add(0, inv, r * w) / count.clamp(min=1)
    var = zeros.index_add(0, inv, w * (r - mean[inv]) ** 2) / (count - 1).clamp(min=1)
    z = (r - mean[inv]) / (var.sqrt()[inv] + eps)  # [K] -> [B]
    return torch.where(active & (count[inv] > 1), z, 0.0)


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
    if norm not in NORMS:
        raise ValueError(f"self-reward norm must be one of {', '.join(NORMS)}; got {norm!r} "
                         f"(algo.self_reward.norm)")
    if tuple(group_id.shape) != tuple(response_mask.shape[:1]):
        raise ValueError(f"group_id must be [B]={tuple(response_mask.shape[:1])}; got "
                         f"{tuple(group_id.shape)}")
    raw = self_reward(sft_logprobs, base_logprobs, response_mask).sum(-1)  # [B, L] -> [B]
    mask = response_mask.bool()
    active = mask.any(-1)  # [B]
    if norm == "none":
        return raw, raw
    if norm == "token_mean":
        return raw / mask.sum(-1).clamp(min=1), raw
    inv = torch.unique(group_id, return_inverse=True)[1] if norm == "group_zscore" \
        else torch.zeros_like(group_id)  # [B] dense group index; one set for the batch
    return _zscore(raw, inv, active, eps), raw


def sft_ready(folder: Path) -> bool:
    """A finished SFT folder: `rlft.sft` renames it into place only when complete."""
    return (folder / "config.json").is_file()


def prepare(run_path: Path, cfg: Any, algo: Algorithm) -> Algorithm:
    """Run the SFT stage into `<run>/sft` unless it is there (a resumed run), and
    point the reward (and, with init_from_sft, the policy) at it."""
    from rlft.sft import run_sft

    folder = run_path / SFT_FOLDER
    if sft_ready(folder):
        log.info("self-rewarding PPO: reusing the SFT model in %s", folder)
    else:
        log.info("self-rewarding PPO: no algo.self_reward.sft_model given; fine-tuning %s on "
                 "the demonstrations into %s first (sft.* settings)", cfg.model.name, folder)
        run_sft(cfg, folder)
    return _with_sft(cfg, algo, str(folder))


def _with_sft(cfg: Any, algo: Algorithm, sft: str) -> Algorithm:
    args = {**algo.reward_args, "sft_model": sft}
    policy = sft if cfg.algo.self_reward.init_from_sft else None
    return replace(algo, reward_args=args, policy_model=policy, prepare=None)


@ALGORITHMS.register("self_rewarding_ppo")
def build(cfg: Any) -> Algorithm:
    s = cfg.algo.self_reward
    algo = Algorithm(
        name="self_rewarding_ppo", reward_source="self_reward",
        reward_args={"sft_model": None, "base_model": s.base_model or cfg.model.name,
                     "norm": s.norm, "eps": cfg.algo.eps},
        **{**ppo_fields(cfg), "min_group_size": 2 if s.norm == "group_zscore" else 1})
    if s.sft_model:
        return _with_sft(cfg, algo, s.sft_model)
    return replace(algo, prepare=lambda run_path: prepare(run_path, cfg, algo))
