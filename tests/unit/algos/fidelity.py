"""rlft's own pipeline on a hand-made batch, for the *_fidelity tests.

`advantages` runs the steps of `TrainingLoop.advantages` after the rollout
(reward shaping, the estimator, the token filter); `update` runs the real
`LossDriver` on one micro-batch whose "model" is a leaf tensor of log-probs
(and values): the loss is the driver's, the gradient is torch autograd's
d loss / d log p. The tests compare both with plain-loop references written
from the papers' equations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from rlft.algos.catalogue import build_algorithm
from rlft.batch.collate import with_advantages
from rlft.config import load_config
from rlft.learner.driver import LossDriver, Outputs
from rlft.learner.microbatch import MicroBatch
from rlft.types import TrainBatch

F64 = torch.float64


def config(*overrides):
    return load_config(None, ["model.name=tiny-random", "rollout.n=4",
                              "rollout.prompts_per_step=2", *overrides])


def algorithm(*overrides):
    return build_algorithm(config(*overrides))


def make_batch(prompt_len: list[int], resp_len: list[int], group_id: list[int], *,
               old=None, ref=None, rollout=None, values=None, prefix_len=None,
               truncated=None, expert=None) -> TrainBatch:
    """Rows of `prompt_len` prompt then `resp_len` response tokens, right-padded
    to one width (that of the per-token lists given, [B][L], else the longest row)."""
    given = [x for x in (old, ref, rollout, values) if x is not None]
    B = len(resp_len)
    L = len(given[0][0]) if given else max(p + r for p, r in zip(prompt_len, resp_len))
    cols = torch.arange(L)[None, :]  # [1, L]
    p, r = torch.tensor(prompt_len)[:, None], torch.tensor(resp_len)[:, None]
    resp = (cols >= p) & (cols < p + r)  # [B, L]
    k = torch.tensor(prefix_len or [0] * B)[:, None]

    def t(x):
        return None if x is None else torch.tensor(x, dtype=F64)

    return TrainBatch(
        input_ids=torch.ones(B, L, dtype=torch.long), attention_mask=cols < p + r,
        response_mask=resp, advantages=torch.zeros(B, L, dtype=F64),
        group_id=torch.tensor(group_id), policy_version=0, rollout_logprobs=t(rollout),
        old_logprobs=t(old), ref_logprobs=t(ref), old_values=t(values),
        prefix_mask=resp & (cols < p + k),
        expert_mask=None if expert is None else torch.tensor(expert),
        truncated=None if truncated is None else torch.tensor(truncated))


def outcome_rewards(batch: TrainBatch, rewards: list[float]) -> torch.Tensor:
    """[B, L] token rewards: each row's reward on its last response token."""
    out = torch.zeros(batch.response_mask.shape, dtype=F64)
    for b, reward in enumerate(rewards):
        cols = batch.response_mask[b].nonzero().flatten()
        if len(cols):
            out[b, cols[-1]] = reward
    return out


def advantages(algo, batch: TrainBatch, token_rewards: torch.Tensor,
               entropy: torch.Tensor | None = None) -> TrainBatch:
    """The loop's advantage stage after the rollout: shaping, estimator, token filter."""
    token_rewards, _ = algo.shape_rewards(batch, token_rewards)
    batch = with_advantages(batch, token_rewards, algo.advantage, algo.adv_params)
    return algo.token_filter(batch, entropy)


class _Leaf(nn.Module):
    def __init__(self, logprobs: torch.Tensor, values: torch.Tensor | None) -> None:
        super().__init__()
        self.lp = nn.Parameter(logprobs.to(F64).clone())
        self.v = None if values is None else nn.Parameter(values.to(F64).clone())
        self.grads: dict[str, torch.Tensor] = {}
        self.lp.register_hook(lambda g: self.grads.__setitem__("logprobs", g.clone()))
        if self.v is not None:
            self.v.register_hook(lambda g: self.grads.__setitem__("values", g.clone()))

    def forward(self, ids, am, select) -> Outputs:
        zero = torch.zeros_like(self.lp)
        return Outputs(torch.where(select, self.lp, zero), zero,
                       None if self.v is None else torch.where(select, self.v, zero))


def update(batch: TrainBatch, terms, logprobs, values=None):
    """(driver's loss, d loss / d logprobs [B, L], d loss / d values or None, stats)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        leaf = _Leaf(torch.as_tensor(logprobs, dtype=F64), None if values is None
                     else torch.as_tensor(values, dtype=F64))
        opt = torch.optim.SGD(list(leaf.parameters()), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        B, L = batch.input_ids.shape
        driver = LossDriver("fidelity", leaf, leaf, opt, sched,
                            lambda b: [MicroBatch(torch.arange(B), L)], torch.device("cpu"),
                            1, 0.0, 3, "check the test batch")
        stats = driver.update(batch, terms)
    finally:
        if created:
            dist.destroy_process_group()
    return stats.loss, leaf.grads.get("logprobs"), leaf.grads.get("values"), stats
