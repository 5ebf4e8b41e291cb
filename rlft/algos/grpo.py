"""GRPO: group-relative advantages, PPO-clip surrogate, optional KL and entropy.

Variants are options, not new code paths: `algo.advantage=dr_grpo|rloo|
reinforce_pp`, `algo.loss_agg=seq_mean_token_sum_norm` (Dr.GRPO), and DAPO's
clip-higher via `algo.clip_high=0.28`.
"""

from __future__ import annotations

from typing import Any

from rlft.algos.base import AdvantageParams
from rlft.algos.spec import ALGORITHMS, Algorithm, LossTermSpec


@ALGORITHMS.register("grpo")
def build(cfg: Any) -> Algorithm:
    a = cfg.algo
    # Dr.GRPO's constant normaliser is the longest response the run allows.
    norm = float(cfg.rollout.max_new_tokens)
    terms = [
        LossTermSpec("ppo_clip", 1.0, "policy", a.loss_agg, norm_const=norm,
                     params={"clip_low": a.clip_low, "clip_high": a.clip_high,
                             "dual_clip": a.dual_clip}),
    ]
    if a.kl_coef > 0:
        terms.append(LossTermSpec("kl", a.kl_coef, "policy", a.loss_agg, norm_const=norm,
                                  params={"estimator": a.kl_estimator}))
    if a.entropy_coef > 0:
        terms.append(LossTermSpec("entropy_bonus", a.entropy_coef, "policy", a.loss_agg,
                                  norm_const=norm))
    fixed = tuple(terms)
    advantage = a.advantage or "grpo"
    return Algorithm(
        name="grpo",
        advantage=advantage,
        adv_params=AdvantageParams(eps=a.eps, gamma=a.gamma, lam=a.lam),
        terms=lambda step: fixed,
        needs_ref=a.kl_coef > 0,
        min_group_size=1 if advantage == "reinforce_pp" else 2,
    )
