"""GRPO: group-relative advantages, PPO-clip surrogate, optional KL and entropy.

Variants are options, not new code paths: `algo.advantage=dr_grpo|rloo|
reinforce_pp`, `algo.loss_agg=seq_mean_token_sum_norm` (Dr.GRPO), DAPO's
clip-higher via `algo.clip_high=0.28` and its dynamic sampling via
`algo.filter_groups=true` (groups whose rewards are all equal are dropped and,
with `algo.filter_rounds > 1`, refilled from more prompts).

`policy_terms` and `common` are shared with the specs that extend GRPO
(CHORD, Prefix-RFT).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rlft.algos.base import AdvantageParams
from rlft.algos.contract import Algorithm, LossTermSpec, keep_all
from rlft.batch.groups import varied_groups


def policy_terms(cfg: Any, scale: float = 1.0, ppo: tuple[LossTermSpec, ...] | None = None
                 ) -> tuple[LossTermSpec, ...]:
    """GRPO's terms on sampled rows, every weight times `scale`.

    `ppo` replaces the single PPO-clip term (Prefix-RFT splits it by token kind).
    """
    a = cfg.algo
    # Dr.GRPO's constant normaliser is the longest response the run allows.
    norm = norm_const(cfg)
    terms = list(ppo) if ppo is not None else [
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
    return tuple(_scaled(t, scale) for t in terms)


def norm_const(cfg: Any) -> float:
    return float(cfg.rollout.max_new_tokens)


def _scaled(term: LossTermSpec, scale: float) -> LossTermSpec:
    return term if scale == 1.0 else replace(term, weight=term.weight * scale)


def common(cfg: Any) -> dict[str, Any]:
    """Algorithm fields every GRPO-family spec takes from `cfg.algo` unchanged."""
    a = cfg.algo
    advantage = a.advantage or "grpo"
    return dict(advantage=advantage, adv_params=AdvantageParams(eps=a.eps, gamma=a.gamma, lam=a.lam),
                needs=frozenset({"ref_logprobs"} if a.kl_coef > 0 else ()),
                min_group_size=1 if advantage == "reinforce_pp" else 2,
                keep_groups=varied_groups if a.filter_groups else keep_all,
                filter_rounds=a.filter_rounds)


def build(cfg: Any) -> Algorithm:
    fixed = policy_terms(cfg)
    return Algorithm(name="grpo", terms=lambda step: fixed, **common(cfg))
