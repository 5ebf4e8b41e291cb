"""GRPO: group-relative advantages, PPO-clip surrogate, optional KL and entropy.

Variants are options, not new code paths: `algo.advantage=dr_grpo|rloo|
reinforce_pp|reinforce_pp_baseline`, `algo.loss_agg=seq_mean_token_sum_norm`
(Dr.GRPO), the KL as a loss term or in the reward (`algo.kl_in_reward`,
REINFORCE++'s form). DAPO (launch/configs/dapo.yaml) is GRPO with clip-higher
(`algo.clip_high=0.28`, binding only with train.epochs x train.minibatches > 1),
dynamic sampling (`algo.filter_groups=true`: groups whose rewards are all equal
are dropped and, with `algo.filter_rounds > 1`, refilled from more prompts),
the soft overlong punishment (`algo.overlong_buffer`) and overlong filtering
(`algo.filter_truncated`).

`policy_terms`, `ppo_params` and `grpo_family` (an `Algorithm` with every field
the specs take from `cfg.algo` unchanged, which a spec then `replace`s where it
differs) are shared with the specs that extend GRPO (CHORD, Prefix-RFT);
`reward_shaping` with PPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from rlft.algos.base import AdvantageParams
from rlft.algos.contract import Algorithm, LossTermSpec, keep_all, no_filter, no_shaping
from rlft.algos.shaping import compose, drop_truncated, kl_in_reward, overlong_penalty
from rlft.batch.groups import varied_groups

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config

# Estimators whose baseline is a group mean: they need two samples per prompt.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "prefix_rft")


def ppo_params(cfg: Config, clip_low: float, clip_high: float) -> dict[str, Any]:
    """ppo_clip's keyword arguments: the clip range, dual-clip, rollout correction."""
    a = cfg.algo
    params: dict[str, Any] = {"clip_low": clip_low, "clip_high": clip_high,
                              "dual_clip": a.dual_clip}
    c = a.rollout_is
    if c.mode == "auto":  # a Config() built by hand: load_config resolves it
        raise ValueError("algo.rollout_is.mode=auto is resolved when the config loads; build "
                         "the config with rlft.config.load_config")
    if c.mode != "none":
        params.update(rollout_is=c.mode, rollout_is_level=c.level, rollout_is_cap=c.cap,
                      rollout_is_low=c.low, rollout_is_high=c.high)
    return params


def kl_in_reward_on(cfg: Config) -> bool:
    a = cfg.algo
    return a.kl_coef > 0 and (a.kl_in_reward or a.ppo.kl_in_reward)


def policy_terms(cfg: Config, scale: float = 1.0, ppo: tuple[LossTermSpec, ...] | None = None
                 ) -> tuple[LossTermSpec, ...]:
    """GRPO's terms on sampled rows, every weight times `scale`.

    `ppo` replaces the single PPO-clip term (Prefix-RFT splits it by token
    kind). The KL is a loss term unless it is in the reward.
    """
    a = cfg.algo
    # Dr.GRPO's constant normaliser is the longest response the run allows.
    norm = norm_const(cfg)
    terms = list(ppo) if ppo is not None else [
        LossTermSpec("ppo_clip", 1.0, "policy", a.loss_agg, norm_const=norm,
                     params=ppo_params(cfg, a.clip_low, a.clip_high)),
    ]
    if a.kl_coef > 0 and not kl_in_reward_on(cfg):
        terms.append(LossTermSpec("kl", a.kl_coef, "policy", a.loss_agg, norm_const=norm,
                                  params={"estimator": a.kl_estimator}))
    if a.entropy_coef > 0:
        terms.append(LossTermSpec("entropy_bonus", a.entropy_coef, "policy", a.loss_agg,
                                  norm_const=norm))
    return tuple(_scaled(t, scale) for t in terms)


def norm_const(cfg: Config) -> float:
    return float(cfg.rollout.max_new_tokens)


def _scaled(term: LossTermSpec, scale: float) -> LossTermSpec:
    return term if scale == 1.0 else replace(term, weight=term.weight * scale)


@dataclass(frozen=True)
class Shaping:
    """What the reward-side options of `cfg.algo` give a spec (`reward_shaping`)."""

    shape_rewards: Callable  # KL in the reward, DAPO's overlong punishment (Algorithm's)
    needs: frozenset[str]  # the batch fields `shape_rewards` reads
    token_filter: Callable  # DAPO's overlong filtering, or none


def reward_shaping(cfg: Config) -> Shaping:
    """`shape_rewards` (KL in the reward, DAPO's overlong punishment) and the
    batch fields it needs; `token_filter` for DAPO's overlong filtering."""
    a = cfg.algo
    shapers, needs = [], set()
    if kl_in_reward_on(cfg):
        shapers.append(partial(kl_in_reward, coef=a.kl_coef, estimator=a.kl_reward_estimator))
        needs = {"old_logprobs", "ref_logprobs"}
    if a.overlong_buffer > 0:
        if a.overlong_buffer > cfg.rollout.max_new_tokens:
            raise ValueError(f"algo.overlong_buffer={a.overlong_buffer} exceeds "
                             f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}: the buffer "
                             f"is the last part of the allowed length; lower it")
        shapers.append(partial(overlong_penalty, max_len=cfg.rollout.max_new_tokens,
                               buffer=a.overlong_buffer, penalty=a.overlong_penalty))
    shape = no_shaping if not shapers else shapers[0] if len(shapers) == 1 else compose(shapers)
    return Shaping(shape, frozenset(needs), drop_truncated if a.filter_truncated else no_filter)


def grpo_family(cfg: Config, name: str, terms: Callable[[int], tuple[LossTermSpec, ...]],
                default_advantage: str = "grpo") -> Algorithm:
    """The `Algorithm` every GRPO-family spec starts from: its `terms`, and the
    fields it takes from `cfg.algo` unchanged (estimator, shaping, DAPO's
    filters); a spec `replace`s what it changes."""
    a = cfg.algo
    advantage = a.advantage or default_advantage
    shaping = reward_shaping(cfg)
    return Algorithm(
        name=name, advantage=advantage, terms=terms,
        adv_params=AdvantageParams(eps=a.eps, gamma=a.gamma, lam=a.lam),
        needs=shaping.needs | ({"ref_logprobs"} if a.kl_coef > 0 else frozenset()),
        min_group_size=2 if advantage in GROUP_ESTIMATORS else 1,
        keep_groups=varied_groups if a.filter_groups else keep_all,
        filter_rounds=a.filter_rounds, shape_rewards=shaping.shape_rewards,
        token_filter=shaping.token_filter)


def build(cfg: Config) -> Algorithm:
    fixed = policy_terms(cfg)
    return grpo_family(cfg, "grpo", lambda step: fixed)
