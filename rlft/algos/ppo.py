"""PPO with a critic: GAE advantages, PPO-clip policy loss, clipped value loss.

- The critic (workers/critic.py: a value head on the policy's backbone, its
  own FSDP2 learner) gives `values` before advantages and fits `returns`
  after the policy update; the training loop does both because the spec
  needs "values" and names `critic_terms` (it never reads the algorithm's name).
- Advantages: GAE with `algo.gamma` / `algo.lam`, whitened over the batch;
  returns = A + V are the critic's targets.
- KL to the reference (`algo.kl_coef > 0`): a loss term by default, or with
  `algo.ppo.kl_in_reward=true` a per-token penalty in the reward,
  r_t -= kl_coef * KL_t (InstructGPT's form), KL_t estimated from the policy's
  log-probs at rollout time (needs "old_logprobs") and the reference's.
- Value loss: `value_clip` (0.5 * max of the clipped and unclipped squared
  error), clipped to `algo.ppo.value_clip` around the rollout-time value.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from rlft.algos.base import AdvantageParams
from rlft.algos.contract import Algorithm, LossTermSpec, no_shaping
from rlft.algos.grpo import policy_terms
from rlft.algos.losses import kl_penalty
from rlft.types import TrainBatch

CRITIC_ESTIMATORS = ("gae",)


def kl_in_reward(batch: TrainBatch, token_rewards: torch.Tensor, coef: float, estimator: str
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """token_rewards [B, L] minus coef * KL_t on the response tokens, and the mean KL.

    >>> b = TrainBatch(input_ids=torch.ones(1, 3, dtype=torch.long),
    ...                attention_mask=torch.ones(1, 3, dtype=torch.bool),
    ...                response_mask=torch.tensor([[False, True, True]]),
    ...                advantages=torch.zeros(1, 3), group_id=torch.zeros(1), policy_version=0,
    ...                old_logprobs=torch.tensor([[0.0, -1.0, -2.0]]),
    ...                ref_logprobs=torch.tensor([[0.0, -1.5, -1.0]]))
    >>> kl_in_reward(b, torch.tensor([[0.0, 0.0, 1.0]]), 0.5, "k1")[0].tolist()
    [[0.0, -0.25, 1.5]]
    """
    for name in ("old_logprobs", "ref_logprobs"):
        if getattr(batch, name) is None:
            raise ValueError(f"kl_in_reward needs `{name}` in the batch: the spec must set "
                             f"need old_logprobs and ref_logprobs")
    mask = batch.response_mask.bool()
    if batch.expert_mask is not None:
        mask = mask & ~batch.expert_mask.bool()[:, None]  # demonstrations get no reward
    kl = torch.where(mask, kl_penalty(batch.old_logprobs, batch.ref_logprobs, estimator), 0.0)
    mean = float(kl.sum() / mask.sum().clamp(min=1))
    return token_rewards - coef * kl, {"kl_reward/kl": mean}  # [B, L]


def critic_terms(cfg: Any) -> tuple[LossTermSpec, ...]:
    """The critic's value loss: value_clip on the sampled rows, token mean."""
    clip = cfg.algo.ppo.value_clip
    # No clip is a clip wider than any value can move: the unclipped branch always wins.
    return (LossTermSpec("value_clip", 1.0, "policy", "token_mean",
                         params={"clip": float("inf") if clip is None else clip}),)


def ppo_fields(cfg: Any) -> dict[str, Any]:
    """Algorithm fields of PPO with a critic, shared with Self-Rewarding PPO."""
    a = cfg.algo
    advantage = a.advantage or "gae"
    if advantage not in CRITIC_ESTIMATORS:
        raise ValueError(f"algo.advantage={advantage!r}: {a.name} trains a critic whose values "
                         f"feed GAE; use algo.advantage=gae (or algo.name=grpo for a "
                         f"critic-free estimator)")
    in_reward = a.ppo.kl_in_reward and a.kl_coef > 0
    terms = policy_terms(cfg)
    if in_reward:  # the KL acts through the reward, not as a loss term too
        terms = tuple(t for t in terms if t.loss != "kl")
    shape = partial(kl_in_reward, coef=a.kl_coef, estimator=a.kl_estimator) if in_reward \
        else no_shaping
    needs = {"values"} | ({"ref_logprobs"} if a.kl_coef > 0 else set()) \
        | ({"old_logprobs"} if in_reward else set())
    return dict(advantage=advantage,
                adv_params=AdvantageParams(eps=a.eps, gamma=a.gamma, lam=a.lam),
                terms=lambda step: terms, needs=frozenset(needs),
                critic_terms=critic_terms(cfg), shape_rewards=shape, min_group_size=1)


def build(cfg: Any) -> Algorithm:
    return Algorithm(name="ppo", **ppo_fields(cfg))
