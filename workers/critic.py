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
import torch.distributed as dist
from torch import nn

from rlft.algos.base import GlobalCounts
from rlft.algos.contract import LossTermSpec
from rlft.learner import checkpoint as learner_ckpt
from rlft.learner.distributed import (
    init_process_group,
    keep_freed_memory,
    pick_device,
    release_cached_memory,
    shard_with_sum_reduction,
    world_plan,
)
from rlft.learner.driver import LR_SCHEDULES, LossDriver, Outputs, UpdateStats, lr_lambda
from rlft.learner.microbatch import MicroBatch, check_batch, stand_in_inputs
from rlft.learner.model import local_source
from rlft.types import TrainBatch

log = logging.getLogger("rlft.critic")
CKPT_TAG = "critic"


@dataclass(frozen=True)
class CriticParams:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 1
    lr_schedule: str = "constant"
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still reported)
    micro_batch_tokens: int = 4096
    param_dtype: str = "float32"  # compute dtype; master weights stay fp32
    seed: int = 0
    grad_checkpointing: bool = False
    max_nonfinite_steps: int = 3  # raise after this many skipped updates in a row

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES or self.lr < 0 or self.total_steps < 1 \
                or self.micro_batch_tokens < 1 or self.param_dtype not in ("float32", "bfloat16") \
                or self.max_nonfinite_steps < 1:
            raise ValueError(f"CriticParams: need lr >= 0, total_steps >= 1, micro_batch_tokens "
                             f">= 1, max_nonfinite_steps >= 1, lr_schedule in {LR_SCHEDULES}, param_dtype float32|bfloat16; "
                             f"got {self}")


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


class Critic:
    def __init__(self, model: str | Callable[[], nn.Module], params: CriticParams,
                 rank: int = 0, world_size: int = 1, init_method: str | None = None,
                 defer_join: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"Critic rank={rank} must be in [0, world_size={world_size})")
        self.p, self.rank, self.world = params, rank, world_size
        self.device = pick_device(rank)
        keep_freed_memory(self.device)  # CPU: reuse activation pages across updates
        self._own_pg = False
        self._model = local_source(model)  # before the group exists: see Learner
        if not defer_join:
            self.join(init_method)

    def join(self, init_method: str | None) -> None:
        """As `Learner.join`: join the critic world, then build the value model."""
        model, params = self._model, self.p
        self._own_pg = init_process_group(self.device, self.rank, self.world, init_method)
        try:
            torch.manual_seed(params.seed)
            backbone = load_backbone(model)
            if params.grad_checkpointing:
                backbone.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model = self._shard(ValueModel(backbone))
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=params.lr,
                                         betas=params.betas, weight_decay=params.weight_decay)
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(
                params.warmup_steps, params.total_steps, params.lr_schedule, 0.0))
            self.driver = LossDriver(
                "critic", self.model, self._forward, self.opt, self.sched, self._plan,
                self.device, self.world, params.max_grad_norm, params.max_nonfinite_steps,
                "check the returns for NaN or lower algo.ppo.critic_lr", _value_diagnostics)
        except BaseException:
            self.shutdown()
            raise

    def _shard(self, module: ValueModel) -> ValueModel:
        """fully_shard each decoder layer, then the root (embeddings, norm, head); gradients
        are summed over ranks (see the Learner: losses are already global shares)."""
        module.to(self.device)
        shard_with_sum_reduction(module, module.backbone.layers, self.p.param_dtype)
        return module

    def _plan(self, batch: TrainBatch) -> list[MicroBatch]:
        return world_plan(batch.attention_mask, self.p.micro_batch_tokens, False, self.device)

    def _cols(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        return self.driver.cols(t, mb)  # [b, cols]

    def _forward(self, ids: torch.Tensor, am: torch.Tensor, select: torch.Tensor) -> Outputs:
        v = self.model(ids, am)  # [b, cols]
        zeros = torch.zeros_like(v)  # the value loss reads no log-probs or advantages
        return Outputs(logprobs=zeros, entropy=zeros, values=v)

    def release_memory(self) -> None:
        """Colocated mode, after the update: free cached GPU blocks for the engines."""
        release_cached_memory(self.device)

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self.driver.steps

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
        `batch.values` (rollout time) are the old values of a clipped value loss.
        Collective."""
        if batch.returns is None:
            raise ValueError("Critic.update needs batch.returns (value targets): run an "
                             "estimator that produces them (gae) first")
        return self.driver.update(batch, terms)

    def save(self, path: str) -> None:
        """Weights, optimizer and schedule into the folder `path` (DCP). Collective."""
        learner_ckpt.save(path, self.model, self.opt, self.sched, self.driver.counters(),
                          self.rank, CKPT_TAG)

    def load(self, path: str) -> None:
        self.driver.restore(learner_ckpt.load(path, self.model, self.opt, self.sched,
                                              self.rank, CKPT_TAG))

    def shutdown(self) -> None:
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._own_pg = False


def _value_diagnostics(batch: TrainBatch, mb: MicroBatch, out: Outputs, first: torch.Tensor,
                       cnt: GlobalCounts) -> dict[str, torch.Tensor]:
    """Mean rollout-time values and returns over the first term's tokens."""
    return {key: torch.where(first, t[mb.rows, :mb.cols].to(first.device).float(), 0.0).sum()
            / max(cnt.tokens, 1)
            for key, t in (("values_mean", batch.values), ("returns_mean", batch.returns))
            if t is not None}
