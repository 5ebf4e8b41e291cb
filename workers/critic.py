"""The critic: a value head on the policy's architecture, its own FSDP2 learner.

`ValueModel` is the decoder backbone (`AutoModel`, loaded from the policy's
model folder) plus `Linear(hidden, 1)`. Values are aligned with `input_ids`
like every per-token tensor: `values[:, t]` is V of the state the policy was
in when it produced token t (tokens < t), read from hidden state t - 1, so GAE
pairs each response token's reward with the value before it.

Its update is the policy `Learner`'s: the same `LossDriver`
(rlft/learner/driver.py) sums the `LossTermSpec`s it is handed (e.g.
`value_clip`), normalises by step-wide token counts, SUMs gradients over ranks
and aborts after `max_nonfinite_steps` non-finite updates in a row. Every
method that touches weights is collective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rlft.algos.base import GlobalCounts
from rlft.algos.contract import LossTermSpec
from rlft.learner.driver import Outputs, UpdateStats
from rlft.learner.microbatch import MicroBatch, check_batch, stand_in_inputs
from rlft.learner.model import local_source
from rlft.types import TrainBatch
from rlft.workers.trainable import RoleParams, TrainableRole

log = logging.getLogger("rlft.critic")


@dataclass(frozen=True)
class CriticParams(RoleParams):
    """The shared settings (workers/trainable.py `RoleParams`), the critic's lr."""

    lr: float = 1e-5


class ValueModel(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not hasattr(backbone, "layers"):
            raise TypeError(f"the critic needs a decoder backbone with .layers (AutoModel of a "
                            f"causal LM); {type(backbone).__name__} has none")
        hidden = backbone.config.hidden_size
        self.backbone, self.head = backbone, nn.Linear(hidden, 1)
        # Small head: initial values near 0, the scale of whitened-free returns at start.
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[b, L] ids and mask -> [b, L] values; position 0 (no state before it) is 0."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask.long(),
                               use_cache=False).last_hidden_state  # [b, L, H]
        v = self.head(hidden[:, :-1]).squeeze(-1).float()  # [b, L-1, 1] -> [b, L-1]
        return torch.cat([torch.zeros_like(v[:, :1]), v], 1)  # [b, L]


def load_backbone(source: str | Callable[[], nn.Module]) -> nn.Module:
    """The decoder body of a causal LM folder/alias (fp32), or a factory's module."""
    if callable(source):
        return source()
    from transformers import AutoModel

    from rlft.models import resolve_model

    return AutoModel.from_pretrained(resolve_model(source), dtype=torch.float32)


class Critic(TrainableRole):
    role, fix, ckpt_tag = "critic", "check the returns for NaN or lower algo.ppo.critic_lr", \
        "critic"

    def __init__(self, model: str | Callable[[], nn.Module], params: CriticParams,
                 rank: int = 0, world_size: int = 1, init_method: str | None = None,
                 defer_join: bool = False) -> None:
        self._model = local_source(model)  # before the group exists: see Learner
        super().__init__(params, rank, world_size, init_method, defer_join)

    def _build(self) -> None:
        backbone = load_backbone(self._model)
        if self.p.grad_checkpointing:
            backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        value_model = ValueModel(backbone)
        self.model = self.module = self._shard(value_model, value_model.backbone.layers)
        self._train_with(self.model.parameters(), self._forward, _value_diagnostics)

    def _forward(self, ids: torch.Tensor, am: torch.Tensor, select: torch.Tensor) -> Outputs:
        v = self.model(ids, am)  # [b, cols]
        zeros = torch.zeros_like(v)  # the value loss reads no log-probs or advantages
        return Outputs(logprobs=zeros, entropy=zeros, values=v)

    @torch.no_grad()
    def values(self, batch: TrainBatch) -> torch.Tensor:
        """[B, L] CPU float32 values on `response_mask`, 0 elsewhere. Collective."""
        check_batch(batch)
        self.model.eval()
        out = torch.zeros(batch.input_ids.shape)  # [B, L]
        for mb in self._plan(batch):
            if not mb.real:
                self.model(*stand_in_inputs(self.device)[:2])
                continue
            v = self.model(self._cols(batch.input_ids, mb), self._cols(batch.attention_mask, mb))
            out[mb.rows, :mb.cols] = v.float().cpu()
        return torch.where(batch.response_mask.bool(), out, 0.0)

    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        """One optimizer step fitting `batch.returns` (the shared `LossDriver`);
        `batch.old_values` (before the update) are the old values of a clipped value loss.
        Collective."""
        if batch.returns is None:
            raise ValueError("Critic.update needs batch.returns (value targets): run an "
                             "estimator that produces them (gae) first")
        return super().update(batch, terms)


def _value_diagnostics(batch: TrainBatch, mb: MicroBatch, out: Outputs, first: torch.Tensor,
                       cnt: GlobalCounts) -> dict[str, torch.Tensor]:
    """Mean old values and returns over the first term's tokens."""
    return {key: torch.where(first, t[mb.rows, :mb.cols].to(first.device).float(), 0.0).sum()
            / max(cnt.tokens, 1)
            for key, t in (("values_mean", batch.old_values), ("returns_mean", batch.returns))
            if t is not None}
