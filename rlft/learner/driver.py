"""The loss driver: one implementation of the update (loss terms over
micro-batches, global normalisation, gradient clipping, the non-finite guard,
the optimizer step) shared by every trainable role, the policy learner and the
critic; and the learning-rate schedule both use."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rlft.algos import losses  # noqa: F401  (registers the loss terms)
from rlft.algos.aggregation import aggregate
from rlft.algos.base import LOSSES, GlobalCounts, LossInputs
from rlft.algos.contract import LossTermSpec
from rlft.learner.distributed import global_counts, reduce_sums
from rlft.learner.microbatch import MicroBatch, check_batch, stand_in_inputs
from rlft.types import TrainBatch

log = logging.getLogger("rlft.learner")

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float
              ) -> Callable[[int], float]:
    """LR multiplier for step k: linear warm-up over `warmup_steps` (k+1)/W, then
    constant, or cosine / linear decay from 1 to `min_lr_ratio` at `total_steps`."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return fn


def term_names(loss_names: Sequence[str]) -> list[str]:
    """Metric prefixes for loss terms: the loss name, with "#i" when it appears twice.

    >>> term_names(["ppo_clip", "kl", "ppo_clip"])
    ['ppo_clip#0', 'kl', 'ppo_clip#2']
    """
    return [name if list(loss_names).count(name) == 1 else f"{name}#{i}"
            for i, name in enumerate(loss_names)]


HEADLINE = ("clip_frac", "kl", "updates")  # figures with a StepMetrics field of their own


def headline(metrics: dict[str, float], names: Sequence[str], tokens: Sequence[int]
             ) -> dict[str, float]:
    """The step's `clip_frac` and `kl`: over every loss term that reports one
    (`<term>/clip_frac`), weighted by the term's token count, so a PPO term
    split by token kind (Prefix-RFT) gives the joint fraction of clipped tokens.
    A diagnostic's figure (`mismatch/kl`) is no term's and does not count.

    >>> headline({"ppo_clip#0/clip_frac": 0.5, "ppo_clip#1/clip_frac": 0.0, "kl/kl": 0.2},
    ...          ["ppo_clip#0", "ppo_clip#1", "kl"], [10, 30, 40])
    {'clip_frac': 0.125, 'kl': 0.2}
    """
    out = {}
    for short in ("clip_frac", "kl"):
        have = [(metrics[f"{n}/{short}"], t) for n, t in zip(names, tokens)
                if f"{n}/{short}" in metrics]
        if have:
            out[short] = sum(v * t for v, t in have) / max(sum(t for _, t in have), 1)
    return out


def add_to(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """Accumulate a detached figure without forcing a device sync."""
    sums[key] = sums[key] + value if key in sums else value


@dataclass(frozen=True)
class UpdateStats:
    """One update's figures, identical on every rank (reduced over the world)."""

    loss: float  # sum of weighted, aggregated terms
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used
    entropy: float  # mean over response tokens (0 for a role without a policy)
    tokens: int  # response tokens over all ranks
    seconds: float
    skipped: bool = False  # non-finite loss or gradient: no optimizer step
    # "<term>/loss" (unweighted aggregate) and "<term>/<metric>" (token means over
    # the term's tokens), the role's diagnostics, and the short "clip_frac" and
    # "kl" of the first term that reports them. <term> is the loss name, "#i"
    # appended if repeated.
    metrics: dict[str, float] = field(default_factory=dict)

    def flat(self, prefix: str) -> dict[str, float]:
        """`prefix/...` keys for StepMetrics.extra (e.g. the critic's)."""
        out = {f"{prefix}/loss": self.loss, f"{prefix}/grad_norm": self.grad_norm,
               f"{prefix}/lr": self.lr, f"{prefix}/skipped": float(self.skipped)}
        out.update({f"{prefix}/{k}": v for k, v in self.metrics.items()})
        return out


class NonFiniteError(RuntimeError):
    """Too many consecutive updates with a NaN/inf loss or gradient norm."""


@dataclass(frozen=True)
class Outputs:
    """A role's forward pass on one micro-batch, [b, cols] each: the policy's
    log-probs and entropy, and (a critic) values. A role without a policy
    returns zeros for the first two."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.logprobs, self.entropy, self.values) if t is not None]


# (input_ids, attention_mask, selected positions) -> Outputs, all [b, cols].
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Outputs]
# (batch, micro-batch, its Outputs, the first term's mask [b, cols], its counts)
# -> figures to sum over the step (already divided by the global count).
Diagnostics = Callable[[TrainBatch, MicroBatch, Outputs, torch.Tensor, GlobalCounts],
                       dict[str, torch.Tensor]]


def no_diagnostics(batch: TrainBatch, mb: MicroBatch, out: Outputs, first: torch.Tensor,
                   cnt: GlobalCounts) -> dict[str, torch.Tensor]:
    return {}


class LossDriver:
    """One optimizer step of a trainable role over this rank's rows. Collective.

    It sums the `LossTermSpec`s it is handed and never branches on an
    algorithm's name. Each term is normalised by counts over the whole step
    (all micro-batches, all ranks) and gradients are SUMmed over ranks
    (`shard_with_sum_reduction`), so an update does not depend on how the batch
    was split. A NaN/inf loss or gradient skips the optimizer step;
    `max_nonfinite` skips in a row raise `NonFiniteError`. The policy learner
    and the critic are two roles of this one driver.
    """

    def __init__(self, role: str, module: nn.Module, forward: Forward,
                 opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 plan: Callable[[TrainBatch], list[MicroBatch]], device: torch.device,
                 world: int, max_grad_norm: float, max_nonfinite: int, hint: str,
                 diagnostics: Diagnostics = no_diagnostics) -> None:
        self.role, self.module, self.forward = role, module, forward
        self.opt, self.sched, self.plan, self.device, self.world = opt, sched, plan, device, world
        self.max_grad_norm, self.max_nonfinite, self.hint = max_grad_norm, max_nonfinite, hint
        self.diagnostics = diagnostics
        self.trainable = [p for g in opt.param_groups for p in g["params"]]
        self.steps = 0  # optimizer steps taken
        self.nonfinite_in_a_row = 0

    def counters(self) -> dict[str, int]:
        return {"steps": self.steps, "nonfinite_in_a_row": self.nonfinite_in_a_row}

    def restore(self, counters: dict[str, int]) -> None:
        self.steps = counters.get("steps", 0)
        self.nonfinite_in_a_row = counters.get("nonfinite_in_a_row", 0)

    def cols(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        return t[mb.rows, :mb.cols].to(self.device)  # [b, cols]

    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        """Gradients are reduce-scattered after every micro-batch (the default),
        which keeps them sharded: memory over speed."""
        start = time.perf_counter()
        check_batch(batch)
        if not terms:
            raise ValueError(f"{self.role} update needs at least one LossTermSpec")
        self.module.train()
        masks = [batch.loss_mask(t.tokens, t.rows) for t in terms]  # [B, L]
        norm_masks = [m if t.norm_tokens is None else batch.loss_mask(t.norm_tokens, t.rows)
                      for t, m in zip(terms, masks)]  # whose counts normalise each term
        # Normalising counts, then each term's own (its metrics are means over its tokens).
        both, (resp_tokens,) = global_counts(
            norm_masks + masks, [int(batch.response_mask.bool().sum())], self.device)
        counts, own = both[:len(terms)], both[len(terms):]
        names = term_names([t.loss for t in terms])
        sums: dict[str, torch.Tensor] = {}
        for mb in self.plan(batch):
            if not mb.real:  # joins the collectives, adds nothing
                out = self.forward(*stand_in_inputs(self.device))
                (sum(t.sum() for t in out.tensors()) * 0.0).backward()
                continue
            resp = self.cols(batch.response_mask.bool(), mb)
            out = self.forward(self.cols(batch.input_ids, mb),
                               self.cols(batch.attention_mask, mb), resp)  # [b, cols]
            total = torch.zeros((), device=self.device)
            for term, name, mask, norm, cnt, mine in zip(terms, names, masks, norm_masks,
                                                          counts, own):
                value = self._term(batch, mb, term, name, self.cols(mask, mb),
                                   self.cols(norm, mb), cnt, mine.tokens, out, sums)
                total = total + term.weight * value
            total.backward()
            add_to(sums, "loss", total.detach())
            add_to(sums, "entropy", (out.entropy.detach() * resp).sum())
            for key, value in self.diagnostics(batch, mb, out, self.cols(masks[0], mb),
                                               counts[0]).items():
                add_to(sums, key, value)
        return self._step(sums, resp_tokens, start, names, [c.tokens for c in own])

    def _term(self, batch: TrainBatch, mb: MicroBatch, term: LossTermSpec, name: str,
              mask: torch.Tensor, norm_mask: torch.Tensor, cnt: GlobalCounts, own_tokens: int,
              out: Outputs, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """One term on one micro-batch: its share of the globally normalised value
        (`cnt`: counts of `norm_mask`); metrics are means over its own tokens.

        Float inputs are zeroed outside the term's tokens: a NaN in a padding
        column or in another term's rows would otherwise reach the gradient
        (NaN * 0 is NaN, in the forward and in the backward alike).
        """
        def col(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else torch.where(mask, self.cols(t, mb), 0.0)

        inputs = LossInputs(
            logprobs=out.logprobs, response_mask=mask, advantages=col(batch.advantages),
            entropy=out.entropy, old_logprobs=col(batch.old_logprobs),
            ref_logprobs=col(batch.ref_logprobs), rollout_logprobs=col(batch.rollout_logprobs),
            values=None if out.values is None else torch.where(mask, out.values, 0.0),
            old_values=col(batch.old_values), returns=col(batch.returns),
            prefix_mask=None if batch.prefix_mask is None else self.cols(batch.prefix_mask, mb))
        result = LOSSES.get(term.loss)(inputs, **term.params)
        value = aggregate(torch.where(mask, result.loss, 0.0), mask, term.agg, cnt,
                          term.norm_const, norm_mask)
        add_to(sums, f"{name}/loss", value.detach())
        for metric, per_token in result.metrics.items():
            token_sum = torch.where(mask, per_token.detach().float(), 0.0).sum()
            add_to(sums, f"{name}/{metric}", token_sum / max(own_tokens, 1))
        return value

    def _step(self, sums: dict[str, torch.Tensor], resp_tokens: int, start: float,
              names: Sequence[str], own_tokens: Sequence[int]) -> UpdateStats:
        values = reduce_sums(sums, ("loss", "entropy"), self.world, self.device)
        loss = values.pop("loss", 0.0)
        entropy = values.pop("entropy", 0.0) / max(resp_tokens, 1)
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.sched.get_last_lr()[0]
        skipped = not (math.isfinite(norm) and math.isfinite(loss))
        if skipped:
            self._skip(loss, norm)
        else:
            self.nonfinite_in_a_row = 0
            self.opt.step()
            self.sched.step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        values.update(headline(values, names, own_tokens))
        return UpdateStats(loss=loss, grad_norm=norm, lr=lr, entropy=entropy, tokens=resp_tokens,
                           seconds=time.perf_counter() - start, skipped=skipped, metrics=values)

    def _skip(self, loss: float, norm: float) -> None:
        """Drop this step's gradients; optimizer state and schedule stay as they were."""
        self.nonfinite_in_a_row += 1
        log.warning("%s: non-finite loss %.4g or grad norm %.4g: update skipped (%d in a row, "
                    "limit %d)", self.role, loss, norm, self.nonfinite_in_a_row,
                    self.max_nonfinite)
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"{self.role}: {self.nonfinite_in_a_row} non-finite updates in a row "
                f"(loss={loss}, grad_norm={norm}): {self.hint}, or raise max_nonfinite_steps "
                f"(train.max_nonfinite_steps)")
