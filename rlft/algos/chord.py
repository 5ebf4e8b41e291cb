"""CHORD: GRPO on sampled rows plus a weighted expert term on demonstration rows.

loss(step) = (1 - mu(step)) * GRPO(policy rows) + mu(step) * chord_expert(expert rows)

- mu follows `schedules.chord_mu` (linear warm-up to mu_peak, cosine decay to
  mu_valley) and is logged every step as `chord/mu`.
- Expert rows are the demonstrations of the step's own prompts (cycling when
  more rows than prompts are asked for), appended after scoring: they are
  `algo.chord.expert_ratio` of the train batch and take no part in advantages.
- chord_expert weighs each expert token by phi = p(1 - p) (switch off with
  `algo.chord.phi=false` for plain SFT), optionally zeroing tokens with
  p > `algo.chord.cutoff_prob`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import torch

from rlft.algos.contract import Algorithm, LossTermSpec
from rlft.algos.grpo import grpo_family, norm_const, policy_terms
from rlft.algos.schedules import chord_mu
from rlft.batch.collate import add_expert_rows, demonstration_rollouts
from rlft.data.demonstrations import Demonstrations
from rlft.types import PromptBatch, Rollouts, ScoredRollouts

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config


def expert_count(policy_rows: int, ratio: float) -> int:
    """Demonstration rows that make up `ratio` of a batch with `policy_rows` sampled rows.

    >>> expert_count(16, 0.2)  # 4 / (16 + 4) = 0.2
    4
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"algo.chord.expert_ratio must be in [0, 1); got {ratio}")
    return round(ratio * policy_rows / (1.0 - ratio))


def expert_rows(batch: PromptBatch, step: int, demos: Demonstrations, ratio: float) -> Rollouts:
    """The demonstrations of `batch`'s prompts, `ratio` of the train batch."""
    m = expert_count(len(batch.prompts) * batch.n, ratio)
    chosen = [batch.prompts[i % len(batch.prompts)] for i in range(m)]
    tokens = [demos.tokens(p) for p in chosen]
    return demonstration_rollouts(chosen, [t.ids for t in tokens],
                                  [p.demonstration or "" for p in chosen],
                                  [t.model_mask for t in tokens])


def add_demonstrations(scored: ScoredRollouts, batch: PromptBatch, step: int,
                       demos: Demonstrations, ratio: float) -> ScoredRollouts:
    """The `add_rows` hook: the step's demonstration rows after its scored samples."""
    return add_expert_rows(scored, expert_rows(batch, step, demos, ratio))


def chord_combine(rl_loss: torch.Tensor, expert_loss: torch.Tensor, mu: float) -> torch.Tensor:
    """CHORD's objective (1 - mu) * rl_loss + mu * expert_loss, mu in [0, 1].

    Both inputs are already aggregated scalars over their own rows: the RL term
    over sampled rows, the expert term over demonstration rows, picked by the
    batch's `expert_mask` (the learner applies each term to its rows; see
    `LossTermSpec.rows`). `mu` usually follows `schedules.chord_mu`; `build`
    gets the same mix by weighting the terms (1 - mu) and mu.

    >>> float(chord_combine(torch.tensor(2.0), torch.tensor(4.0), 0.25))
    2.5
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"chord_combine: mu must be in [0, 1]; got {mu}")
    return (1.0 - mu) * rl_loss + mu * expert_loss


def build(cfg: Config) -> Algorithm:
    c = cfg.algo.chord
    mu = partial(chord_mu, mu_peak=c.mu_peak, mu_valley=c.mu_valley,
                 warmup_steps=c.warmup_steps, decay_steps=c.decay_steps)
    mu(0)  # bad schedule settings fail here, before any model loads
    expert_count(1, c.expert_ratio)
    if c.expert_ratio == 0:
        raise ValueError("algo.chord.expert_ratio=0 adds no demonstration rows, so the expert "
                         "term has nothing to train: set it in (0, 1) (e.g. 0.2) or use "
                         "algo.name=grpo")
    expert = LossTermSpec("chord_expert", 1.0, "expert", cfg.algo.loss_agg,
                          norm_const=norm_const(cfg),
                          params={"phi": c.phi, "cutoff_prob": c.cutoff_prob})

    def terms(step: int) -> tuple[LossTermSpec, ...]:
        m = mu(step)
        return (*policy_terms(cfg, scale=1.0 - m), replace(expert, weight=m))

    demos = Demonstrations(cfg.model.name)
    return replace(grpo_family(cfg, "chord", terms),
                   add_rows=partial(add_demonstrations, demos=demos, ratio=c.expert_ratio),
                   step_metrics=lambda step: {"chord/mu": mu(step)})
