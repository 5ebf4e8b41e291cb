"""The critic: a value head on the policy's architecture, its own FSDP2 learner.

`ValueModel` is the decoder backbone (`AutoModel`, loaded from the policy's
model folder) plus `Linear(hidden, 1)`. Values are aligned with `input_ids`
like every per-token tensor: `values[:, t]` is V of the state the policy was
in when it produced token t (tokens < t), read from hidden state t - 1, so GAE
pairs each response token's reward with the value before it.

Like the policy `Learner` it is algorithm-blind (it sums the `LossTermSpec`s
it is handed, e.g. `value_clip`), normalises by step-wide token counts and
SUMs gradients over ranks, so an update does not depend on the micro-batch or
data-parallel split. Every method that touches weights is collective.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from rlft import learn_ckpt
from rlft.algos import losses  # noqa: F401  (registers the loss terms)
from rlft.algos.aggregation import aggregate
from rlft.algos.base import LOSSES, GlobalCounts, LossInputs
from rlft.algos.spec import LossTermSpec, token_mask
from rlft.learn_utils import (
    LR_SCHEDULES,
    MicroBatch,
    add_to,
    check_batch,
    global_counts,
    init_process_group,
    lr_lambda,
    pick_device,
    reduce_sums,
    rows_mask,
    shard_with_sum_reduction,
    stand_in_inputs,
    term_names,
    world_plan,
)
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

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES or self.lr < 0 or self.total_steps < 1 \
                or self.micro_batch_tokens < 1 or self.param_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"CriticParams: need lr >= 0, total_steps >= 1, micro_batch_tokens "
                             f">= 1, lr_schedule in {LR_SCHEDULES}, param_dtype float32|bfloat16; "
                             f"got {self}")


@dataclass(frozen=True)
class CriticStats:
    """One critic update's figures, identical on every rank."""

    loss: float  # sum of weighted, aggregated terms
    grad_norm: float  # before clipping
    lr: float
    values_mean: float  # rollout-time values over the terms' tokens
    returns_mean: float
    seconds: float
    skipped: bool = False  # non-finite loss or gradient: no optimizer step
    metrics: dict[str, float] = field(default_factory=dict)  # "<term>/<metric>"

    def flat(self) -> dict[str, float]:
        """`critic/...` keys for StepMetrics.extra."""
        out = {"critic/loss": self.loss, "critic/grad_norm": self.grad_norm, "critic/lr": self.lr,
               "critic/values_mean": self.values_mean, "critic/returns_mean": self.returns_mean,
               "critic/skipped": float(self.skipped)}
        out.update({f"critic/{k}": v for k, v in self.metrics.items()})
        return out


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
                 rank: int = 0, world_size: int = 1, init_method: str | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"Critic rank={rank} must be in [0, world_size={world_size})")
        self.p, self.rank, self.world = params, rank, world_size
        self.device = pick_device(rank)
        self._own_pg = init_process_group(self.device, rank, world_size, init_method)
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
        except BaseException:
            self.shutdown()
            raise
        self.steps = 0

    def _shard(self, module: ValueModel) -> ValueModel:
        """fully_shard each decoder layer, then the root (embeddings, norm, head); gradients
        are summed over ranks (see the Learner: losses are already global shares)."""
        module.to(self.device)
        shard_with_sum_reduction(module, module.backbone.layers, self.p.param_dtype)
        return module

    def _plan(self, batch: TrainBatch) -> list[MicroBatch]:
        return world_plan(batch.attention_mask, self.p.micro_batch_tokens, False, self.device)

    def _cols(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        return t[mb.rows, :mb.cols].to(self.device)  # [b, cols]

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

    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> CriticStats:
        """One optimizer step fitting `batch.returns`; `batch.values` (rollout time) are
        the old values of a clipped value loss. Collective."""
        start = time.perf_counter()
        check_batch(batch)
        if batch.returns is None:
            raise ValueError("Critic.update needs batch.returns (value targets): run an "
                             "estimator that produces them (gae) first")
        if not terms:
            raise ValueError("Critic.update needs at least one LossTermSpec (e.g. value_clip)")
        self.model.train()
        masks = [rows_mask(batch, t.rows) & token_mask(batch, t.tokens) for t in terms]  # [B, L]
        counts, _ = global_counts(masks, [], self.device)
        names = term_names([t.loss for t in terms])
        sums: dict[str, torch.Tensor] = {}
        for mb in self._plan(batch):
            if not mb.real:  # joins the collectives, adds nothing
                (self.model(*stand_in_inputs(self.device)[:2]).sum() * 0.0).backward()
                continue
            v = self.model(self._cols(batch.input_ids, mb), self._cols(batch.attention_mask, mb))
            total = torch.zeros((), device=self.device)
            for term, name, mask, cnt in zip(terms, names, masks, counts):
                total = total + term.weight * self._term(batch, mb, term, name,
                                                         self._cols(mask, mb), cnt, v, sums)
            total.backward()
            add_to(sums, "loss", total.detach())
            first = self._cols(masks[0], mb)  # diagnostics over the first term's tokens
            for key, t in (("values_mean", batch.values), ("returns_mean", batch.returns)):
                if t is not None:
                    add_to(sums, key, torch.where(first, self._cols(t, mb).float(), 0.0).sum()
                           / max(counts[0].tokens, 1))
        return self._step(sums, start)

    def _term(self, batch: TrainBatch, mb: MicroBatch, term: LossTermSpec, name: str,
              mask: torch.Tensor, cnt: GlobalCounts, v: torch.Tensor,
              sums: dict[str, torch.Tensor]) -> torch.Tensor:
        def col(t: torch.Tensor | None) -> torch.Tensor | None:
            # Zeroed outside the term's tokens: NaN * 0 would still reach the gradient.
            return None if t is None else torch.where(mask, self._cols(t, mb).float(), 0.0)

        zeros = torch.zeros_like(v)  # the value loss reads no log-probs or advantages
        inputs = LossInputs(logprobs=zeros, response_mask=mask, advantages=zeros,
                            values=torch.where(mask, v, 0.0), old_values=col(batch.values),
                            returns=col(batch.returns))
        out = LOSSES.get(term.loss)(inputs, **term.params)
        value = aggregate(torch.where(mask, out.loss, 0.0), mask, term.agg, cnt, term.norm_const)
        add_to(sums, f"{name}/loss", value.detach())
        for metric, per_token in out.metrics.items():
            token_sum = torch.where(mask, per_token.detach().float(), 0.0).sum()
            add_to(sums, f"{name}/{metric}", token_sum / max(cnt.tokens, 1))
        return value

    def _step(self, sums: dict[str, torch.Tensor], start: float) -> CriticStats:
        values = reduce_sums(sums, ("loss",), self.world, self.device)
        loss = values.pop("loss")
        v_mean, r_mean = values.pop("values_mean", 0.0), values.pop("returns_mean", 0.0)
        max_norm = self.p.max_grad_norm if self.p.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.sched.get_last_lr()[0]
        skipped = not (math.isfinite(norm) and math.isfinite(loss))
        if skipped:
            log.warning("critic: non-finite loss %.4g or grad norm %.4g; update skipped (check "
                        "the returns for NaN or lower algo.ppo.critic_lr)", loss, norm)
        else:
            self.opt.step()
            self.sched.step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        return CriticStats(loss=loss, grad_norm=norm, lr=lr, values_mean=v_mean,
                           returns_mean=r_mean, seconds=time.perf_counter() - start,
                           skipped=skipped, metrics=values)

    def save(self, path: str) -> None:
        """Weights, optimizer and schedule into the folder `path` (DCP). Collective."""
        learn_ckpt.save(path, self.model, self.opt, self.sched, {"steps": self.steps}, self.rank,
                        CKPT_TAG)

    def load(self, path: str) -> None:
        counters = learn_ckpt.load(path, self.model, self.opt, self.sched, self.rank, CKPT_TAG)
        self.steps = counters.get("steps", 0)

    def shutdown(self) -> None:
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._own_pg = False
