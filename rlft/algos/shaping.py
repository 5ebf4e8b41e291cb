"""Per-token reward terms added before advantages (`Algorithm.shape_rewards`):
the KL penalty in the reward and DAPO's soft overlong punishment, and their
composition. Each takes (TrainBatch before advantages, token rewards [B, L])
and returns (token rewards, metrics). Demonstration rows get neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from rlft.algos.losses import kl_penalty
from rlft.types import TrainBatch

Shaper = Callable[[TrainBatch, torch.Tensor], tuple[torch.Tensor, Mapping[str, float]]]


def kl_in_reward(batch: TrainBatch, token_rewards: torch.Tensor, coef: float, estimator: str
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """token_rewards [B, L] minus coef * KL_t on the response tokens, and the mean KL.

    KL_t compares the sampling policy (`old_logprobs`, at rollout time) with
    the reference; k1 (the log-ratio) is the estimator whose score-function
    gradient is the KL's gradient (verl's `kl_penalty: kl`), k3's is biased.

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
            raise ValueError(f"kl_in_reward needs `{name}` in the batch: the spec must "
                             f"need old_logprobs and ref_logprobs")
    mask = batch.loss_mask(rows="policy")  # demonstrations get no reward
    kl = torch.where(mask, kl_penalty(batch.old_logprobs, batch.ref_logprobs, estimator), 0.0)
    mean = float(kl.sum() / mask.sum().clamp(min=1))
    return token_rewards - coef * kl, {"kl_reward/kl": mean}  # [B, L]


def overlong_penalty(batch: TrainBatch, token_rewards: torch.Tensor, max_len: int, buffer: int,
                     penalty: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), on the last token.

    With n the row's sampled tokens (forced prefix tokens excluded: the cap
    counts sampled ones), the reward gains -penalty * (n - (max_len - buffer))
    / buffer when n > max_len - buffer (at most -penalty, at n = max_len), 0
    otherwise.

    >>> b = TrainBatch(input_ids=torch.ones(2, 5, dtype=torch.long),
    ...                attention_mask=torch.ones(2, 5, dtype=torch.bool),
    ...                response_mask=torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]]).bool(),
    ...                advantages=torch.zeros(2, 5), group_id=torch.zeros(2), policy_version=0)
    >>> overlong_penalty(b, torch.zeros(2, 5), max_len=4, buffer=2)[0].tolist()
    [[0.0, 0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    if buffer < 1 or buffer > max_len:
        raise ValueError(f"overlong_penalty: buffer must be in [1, max_len={max_len}] "
                         f"(algo.overlong_buffer); got {buffer}")
    mask = batch.loss_mask(rows="policy")  # demonstrations get no reward
    sampled = batch.loss_mask("sampled", "policy")
    n = sampled.sum(-1).to(token_rewards.dtype)  # [B]
    pen = -penalty * ((n - (max_len - buffer)) / buffer).clamp(0.0, 1.0)  # [B]
    cols = torch.arange(mask.shape[1], device=mask.device)  # [L]
    last = torch.where(mask, cols, -1).max(-1).values  # [B] last response column, -1 if none
    at_last = (cols[None, :] == last[:, None]) & mask  # [B, L]
    rows = mask.any(-1)
    return token_rewards + torch.where(at_last, pen[:, None], 0.0), {
        "overlong/penalty": float(pen[rows].mean()) if rows.any() else 0.0,
        "overlong/frac": float((pen[rows] < 0).float().mean()) if rows.any() else 0.0}


def compose(shapers: Sequence[Shaper]) -> Shaper:
    """Apply the shapers in order, merging their metrics."""

    def shape(batch: TrainBatch, token_rewards: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, float]]:
        metrics: dict[str, float] = {}
        for fn in shapers:
            token_rewards, m = fn(batch, token_rewards)
            metrics.update(m)
        return token_rewards, metrics

    return shape


def drop_truncated(batch: TrainBatch, entropy: torch.Tensor | None) -> TrainBatch:
    """DAPO's overlong filtering, a token filter: rows cut at the length cap
    (`truncated`) leave the loss after advantages (their group's baseline
    counted them)."""
    if batch.truncated is None:
        return batch
    return batch.with_(response_mask=batch.response_mask.bool() & ~batch.truncated.bool()[:, None])
