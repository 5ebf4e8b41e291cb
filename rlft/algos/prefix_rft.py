"""Prefix-RFT: some rollouts of each prompt continue from a demonstration prefix.

- Sampling (`make_batch`): of each prompt's `rollout.n` samples, round(fraction
  * n) continue from the first floor(ratio * len) tokens of the prompt's
  demonstration (its EOS excluded: the policy still has to finish). One ratio
  per prompt and step, low + (high - low) * Beta(beta_a, beta_b), the window
  (low, high) moving from its start to its end bounds over `train.steps`
  (`schedules.prefix_window`); the generator is seeded by (seed, step), so a
  resumed run draws the same prefixes.
- The forced tokens are the first `prefix_len` tokens of the response, marked
  by `TrainBatch.prefix_mask`, and trained like sampled ones.
- Groups: per (prompt, prefix) by default, so a prefixed sample is compared
  with the other samples that share its prefix; `group_by=prompt` makes one
  mixed group per prompt.
- Token selection (`token_filter`): prefix tokens keep their loss only among
  the step's `entropy_top_frac` highest-entropy prefix tokens (current policy);
  the others leave `response_mask`.
- Loss: PPO-clip split in two terms, sampled tokens with (clip_low, clip_high),
  prefix tokens with the prefix clip range, both normalised by the count of all
  trained tokens, so together they are one token mean.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from rlft.algos.contract import Algorithm, LossTermSpec
from rlft.algos.grpo import common, norm_const, policy_terms
from rlft.algos.schedules import prefix_window, sample_prefix_ratio, select_top_entropy
from rlft.data.demonstrations import Demonstrations
from rlft.types import Prompt, PromptBatch, TrainBatch


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
               demos: Demonstrations, mixed: bool) -> PromptBatch:
    """The step's requests: per prompt, plain ones first, then prefixed ones."""
    plain, prefixed, g = split_samples(n, p.fraction)
    low, high = prefix_window(step, steps, p.low_start, p.low_end, p.high_start, p.high_end,
                              p.schedule)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ratios = sample_prefix_ratio(gen, len(prompts), low, high, p.beta_a, p.beta_b).tolist()
    reqs, prefix_ids, group_id = [], [], []
    first = 2 * step * len(prompts)  # two ids per prompt: distinct across steps
    for i, (prompt, ratio) in enumerate(zip(prompts, ratios)):
        demo = demos.ids(prompt)[:-1]  # [:-1] drops the EOS
        cut = math.floor(ratio * len(demo) + 1e-9)  # the epsilon keeps 0.29 * 100 at 29
        plain_id = first + 2 * i
        for ids, gid, count in (((), plain_id, plain),
                                (tuple(demo[:cut]), plain_id + (0 if mixed else 1), prefixed)):
            reqs += [prompt] * (count // g)
            prefix_ids += [ids] * (count // g)
            group_id += [gid] * (count // g)
    return PromptBatch(prompts=tuple(reqs), prefix_ids=tuple(prefix_ids),
                       group_id=tuple(group_id), n=g)


def keep_top_entropy_prefix(batch: TrainBatch, entropy: torch.Tensor, frac: float) -> TrainBatch:
    """Prefix tokens outside the step's top-`frac` entropy leave the loss.

    The selection runs over all prefix tokens of sampled rows in the batch; the
    narrowed `prefix_mask` marks the prefix tokens that stay.
    """
    if batch.prefix_mask is None:
        return batch
    prefix = batch.prefix_mask.bool() & batch.response_mask.bool()  # [B, L]
    if batch.expert_mask is not None:
        prefix = prefix & ~batch.expert_mask.bool()[:, None]
    keep = select_top_entropy(entropy, prefix, frac)  # [B, L]
    return batch.with_(response_mask=batch.response_mask.bool() & ~(prefix & ~keep),
                       prefix_mask=keep)


def build(cfg: Any) -> Algorithm:
    a, p = cfg.algo, cfg.algo.prefix
    n = cfg.rollout.n
    plain, prefixed, _ = split_samples(n, p.fraction)
    steps = cfg.train.steps
    prefix_window(0, steps, p.low_start, p.low_end, p.high_start, p.high_end, p.schedule)
    sample_prefix_ratio(torch.Generator(), 1, 0.0, 1.0, p.beta_a, p.beta_b)  # checks the shapes
    if prefixed == 0:
        raise ValueError(f"algo.prefix.fraction={p.fraction} gives no prefixed sample of "
                         f"rollout.n={n}: raise it (round(fraction * n) >= 1)")
    fields = common(cfg)
    fields["needs"] = fields["needs"] | {"entropy"}  # the token filter reads it
    if p.group_by == "prompt_prefix" and fields["min_group_size"] > 1 and 1 in (plain, prefixed):
        raise ValueError(
            f"algo.prefix.fraction={p.fraction} with rollout.n={n} makes {plain} plain and "
            f"{prefixed} prefixed samples per prompt; with group_by=prompt_prefix a group of "
            f"one has no baseline: choose fraction and n so that each is 0 or >= 2, or set "
            f"algo.prefix.group_by=prompt")
    norm = norm_const(cfg)

    def ppo(tokens: str, lo: float, hi: float) -> LossTermSpec:
        return LossTermSpec("ppo_clip", 1.0, "policy", a.loss_agg, norm_const=norm,
                            params={"clip_low": lo, "clip_high": hi, "dual_clip": a.dual_clip},
                            tokens=tokens, norm_tokens="all")

    fixed = policy_terms(cfg, ppo=(
        ppo("sampled", a.clip_low, a.clip_high),
        ppo("prefix", a.clip_low if p.clip_low is None else p.clip_low,
            a.clip_high if p.clip_high is None else p.clip_high)))

    def step_metrics(step: int) -> dict[str, float]:
        low, high = prefix_window(step, steps, p.low_start, p.low_end, p.high_start, p.high_end,
                                  p.schedule)
        return {"prefix/ratio_low": low, "prefix/ratio_high": high}

    return Algorithm(
        name="prefix_rft", terms=lambda step: fixed,
        make_batch=partial(make_batch, p=p, seed=cfg.train.seed, steps=steps,
                           demos=Demonstrations(cfg.model.name), mixed=p.group_by == "prompt"),
        token_filter=partial(keep_top_entropy_prefix, frac=p.entropy_top_frac),
        step_metrics=step_metrics, **fields,
    )
