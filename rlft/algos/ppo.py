"""PPO with a critic: GAE advantages, PPO-clip policy loss, clipped value loss.

- The critic (workers/critic.py: a value head on the policy's backbone, its
  own FSDP2 learner) gives `old_values` before advantages and fits `returns`
  after the policy update; the training loop does both because the spec
  needs "old_values" and names `critic_terms` (it never reads the algorithm's name).
- Advantages: GAE with `algo.gamma` / `algo.lam`, whitened over the batch;
  returns = A + V are the critic's targets.
- KL to the reference (`algo.kl_coef > 0`): a loss term by default, or with
  `algo.kl_in_reward=true` (or `algo.ppo.kl_in_reward`) a per-token penalty
  in the reward, r_t -= kl_coef * KL_t (InstructGPT's form), KL_t estimated
  with `algo.kl_reward_estimator` (k1 by default) from the policy's log-probs
  at rollout time (needs "old_logprobs") and the reference's.
- Value loss: `value_clip` (0.5 * max of the clipped and unclipped squared
  error), clipped to `algo.ppo.value_clip` around the rollout-time value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlft.algos.base import AdvantageParams
from rlft.algos.contract import Algorithm, LossTermSpec
from rlft.algos.grpo import policy_terms, reward_shaping

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config

CRITIC_ESTIMATORS = ("gae",)


def critic_terms(cfg: Config) -> tuple[LossTermSpec, ...]:
    """The critic's value loss: value_clip on the sampled rows, token mean."""
    clip = cfg.algo.ppo.value_clip
    # No clip is a clip wider than any value can move: the unclipped branch always wins.
    return (LossTermSpec("value_clip", 1.0, "policy", "token_mean",
                         params={"clip": float("inf") if clip is None else clip}),)


def ppo_family(cfg: Config, name: str) -> Algorithm:
    """PPO with a critic, which Self-Rewarding PPO `replace`s where it differs."""
    a = cfg.algo
    advantage = a.advantage or "gae"
    if advantage not in CRITIC_ESTIMATORS:
        raise ValueError(f"algo.advantage={advantage!r}: {a.name} trains a critic whose values "
                         f"feed GAE; use algo.advantage=gae (or algo.name=grpo for a "
                         f"critic-free estimator)")
    terms = policy_terms(cfg)  # the KL is a loss term unless it is in the reward
    shaping = reward_shaping(cfg)
    needs = {"old_values"} | shaping.needs | ({"ref_logprobs"} if a.kl_coef > 0 else set())
    return Algorithm(name=name, advantage=advantage,
                     adv_params=AdvantageParams(eps=a.eps, gamma=a.gamma, lam=a.lam),
                     terms=lambda step: terms, needs=frozenset(needs),
                     critic_terms=critic_terms(cfg), min_group_size=1,
                     shape_rewards=shaping.shape_rewards, token_filter=shaping.token_filter)


def build(cfg: Config) -> Algorithm:
    return ppo_family(cfg, "ppo")
