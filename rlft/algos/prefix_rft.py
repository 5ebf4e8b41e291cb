"""Prefix-RFT: some rollouts of each prompt continue from a demonstration prefix.

- Sampling (`make_batch`): of each prompt's `rollout.n` samples, round(fraction
  * n) continue from the first floor(ratio * len) tokens of the prompt's
  demonstration (its EOS excluded: the policy still has to finish; of a
  multi-turn demonstration, only its first model turn, e.g. the tool call:
  the tool's result is the tool's, not a prefix to force). One ratio
  per prompt and step, low + (high - low) * Beta(beta_a, beta_b), the window
  (low, high) moving from its start to its end bounds over `train.steps`
  (`schedules.prefix_window`); the generator is seeded by (seed, step), so a
  resumed run draws the same prefixes.
- The forced tokens are the first `prefix_len` tokens of the response, marked
  by `TrainBatch.prefix_mask`. One group id per prompt: the `prefix_rft`
  estimator (rlft/algos/advantages.py) gives the sampled tokens the base
  estimator's advantage (`algo.advantage`, Dr.GRPO by default as in the paper)
  within (prompt, prefix) groups (`group_by=prompt`: one mixed group per
  prompt), and the forced tokens their own, (reward - mean reward of the
  prompt's plain samples) / (samples sharing the prefix): a demonstration
  prefix whose continuations beat the policy's own samples is pushed up,
  one that does worse is pushed down (the authors' `core_algos.py`).
- Token selection (`token_filter`): prefix tokens keep their advantage only
  among the step's `entropy_top_frac` highest-entropy prefix tokens (sampling
  policy); the others get advantage 0 but stay in the loss's token count and
  in the KL/entropy terms, as the authors' entropy reshaper does.
- Loss: PPO-clip split in two terms, sampled tokens with (clip_low, clip_high),
  prefix tokens with the prefix clip range, both normalised by the count of all
  trained tokens, so together they are one token mean (or one per-row mean).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from rlft.algos.contract import Algorithm, LossTermSpec
from rlft.algos.grpo import grpo_family, norm_const, policy_terms, ppo_params
from rlft.algos.schedules import prefix_window, sample_prefix_ratio, select_top_entropy
from rlft.data.demonstrations import Demonstrations
from rlft.types import Prompt, PromptBatch, TrainBatch

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config


def split_samples(n: int, fraction: float) -> tuple[int, int, int]:
    """(plain, prefixed, per_request) samples per prompt.

    All requests of a PromptBatch draw the same number of samples, so each
    prompt becomes plain/g + prefixed/g requests of g = gcd(plain, prefixed).

    >>> split_samples(8, 0.25)
    (6, 2, 2)
    """
    k = round(fraction * n)
    return n - k, k, math.gcd(n - k, k)


def make_batch(prompts: list[Prompt], step: int, n: int, *, p: Any, seed: int, steps: int,
               demos: Demonstrations) -> PromptBatch:
    """The step's requests: per prompt, plain ones first, then prefixed ones,
    all in the prompt's one group (the estimator tells them apart)."""
    plain, prefixed, g = split_samples(n, p.fraction)
    low, high = prefix_window(step, steps, p.low_start, p.low_end, p.high_start, p.high_end,
                              p.schedule)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ratios = sample_prefix_ratio(gen, len(prompts), low, high, p.beta_a, p.beta_b).tolist()
    reqs, prefix_ids, group_id = [], [], []
    first = step * len(prompts)  # one id per prompt: distinct across steps
    for i, (prompt, ratio) in enumerate(zip(prompts, ratios)):
        demo = demos.tokens(prompt).prefix  # no EOS; a multi-turn one: its first model turn
        cut = math.floor(ratio * len(demo) + 1e-9)  # the epsilon keeps 0.29 * 100 at 29
        for ids, count in (((), plain), (tuple(demo[:cut]), prefixed)):
            reqs += [prompt] * (count // g)
            prefix_ids += [ids] * (count // g)
            group_id += [first + i] * (count // g)
    return PromptBatch(prompts=tuple(reqs), prefix_ids=tuple(prefix_ids),
                       group_id=tuple(group_id), n=g)


def keep_top_entropy_prefix(batch: TrainBatch, entropy: torch.Tensor, frac: float) -> TrainBatch:
    """Prefix tokens outside the step's top-`frac` entropy get advantage 0.

    The selection runs over all prefix tokens of sampled rows in the batch.
    Masks stay as they are: a dropped token still counts in its term's
    normaliser and in the KL and entropy terms (the authors' reshaper zeroes
    the advantage only).
    """
    if batch.prefix_mask is None:
        return batch
    prefix = batch.loss_mask("prefix", "policy")  # [B, L]
    keep = select_top_entropy(entropy, prefix, frac)  # [B, L]
    return batch.with_(advantages=torch.where(prefix & ~keep, 0.0, batch.advantages))


def build(cfg: Config) -> Algorithm:
    a, p = cfg.algo, cfg.algo.prefix
    n = cfg.rollout.n
    plain, prefixed, _ = split_samples(n, p.fraction)
    steps = cfg.train.steps
    prefix_window(0, steps, p.low_start, p.low_end, p.high_start, p.high_end, p.schedule)
    sample_prefix_ratio(torch.Generator(), 1, 0.0, 1.0, p.beta_a, p.beta_b)  # checks the shapes
    if prefixed == 0:
        raise ValueError(f"algo.prefix.fraction={p.fraction} gives no prefixed sample of "
                         f"rollout.n={n}: raise it (round(fraction * n) >= 1)")
    family = grpo_family(cfg, "prefix_rft", lambda step: (), default_advantage="dr_grpo")
    base = family.advantage  # the estimator Prefix-RFT's wraps
    if base in ("gae", "prefix_rft"):
        raise ValueError(f"algo.advantage={base!r}: Prefix-RFT runs no critic and wraps a "
                         f"critic-free estimator (grpo, dr_grpo, rloo, reinforce_pp, "
                         f"reinforce_pp_baseline); unset it for dr_grpo")
    if plain == 0:
        raise ValueError(f"algo.prefix.fraction={p.fraction} with rollout.n={n} leaves no plain "
                         f"sample, and a prefix is credited against the plain samples' mean "
                         f"reward: lower the fraction (round(fraction * n) < n)")
    norm = norm_const(cfg)

    def ppo(tokens: str, lo: float, hi: float) -> LossTermSpec:
        return LossTermSpec("ppo_clip", 1.0, "policy", a.loss_agg, norm_const=norm,
                            params=ppo_params(cfg, lo, hi), tokens=tokens, norm_tokens="all")

    fixed = policy_terms(cfg, ppo=(
        ppo("sampled", a.clip_low, a.clip_high),
        ppo("prefix", a.clip_low if p.clip_low is None else p.clip_low,
            a.clip_high if p.clip_high is None else p.clip_high)))
    then = family.token_filter  # DAPO's overlong filtering, when on

    def token_filter(batch: TrainBatch, entropy: torch.Tensor | None) -> TrainBatch:
        return then(keep_top_entropy_prefix(batch, entropy, p.entropy_top_frac), entropy)

    def step_metrics(step: int) -> dict[str, float]:
        low, high = prefix_window(step, steps, p.low_start, p.low_end, p.high_start, p.high_end,
                                  p.schedule)
        return {"prefix/ratio_low": low, "prefix/ratio_high": high}

    return replace(
        family, terms=lambda step: fixed, advantage="prefix_rft",
        adv_params=replace(family.adv_params, base=base,
                           split_prefix=p.group_by == "prompt_prefix"),
        needs=family.needs | {"entropy"},  # the token filter reads it
        make_batch=partial(make_batch, p=p, seed=cfg.train.seed, steps=steps,
                           demos=Demonstrations(cfg.model.name)),
        token_filter=token_filter, step_metrics=step_metrics)
