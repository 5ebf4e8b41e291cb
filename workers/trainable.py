"""What every trainable role shares: the policy `Learner` (workers/learner.py) and
the `Critic` (workers/critic.py) are the same worker around a different module.

`RoleParams` holds the optimizer, schedule, micro-batch and precision settings
and checks them once; a role's own settings are fields of its subclass.
`TrainableRole` is the rest: a rank of an FSDP2 world (its device, the process
group it joins, or the caller's), the module built once the group exists and
sharded layer by layer with gradients summed over ranks, AdamW with the LR
schedule, the shared `LossDriver` (rlft/learner/driver.py), the micro-batch
plan, memory release for colocated engines, checkpoints and shutdown. A role
says what it builds (`_build`: its module, which layers shard, what the
driver's forward returns) and nothing else.

Every method that touches weights is collective: all ranks call it, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

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
from rlft.learner.driver import LR_SCHEDULES, LossDriver, UpdateStats, lr_lambda
from rlft.learner.microbatch import MicroBatch
from rlft.types import TrainBatch

PARAM_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class RoleParams:
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1
    lr_schedule: str = "constant"  # constant | cosine | linear, after warm-up
    min_lr_ratio: float = 0.0  # decay floor, as a fraction of lr
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still reported)
    # Real tokens per micro-batch with packing, rows x longest row without.
    micro_batch_tokens: int = 4096
    grad_checkpointing: bool = False
    # Compute dtype. Master weights, optimizer state and gradient reduction stay
    # fp32; "bfloat16" casts the gathered parameters (FSDP2 mixed precision).
    param_dtype: str = "float32"
    seed: int = 0
    max_nonfinite_steps: int = 3  # raise after this many skipped updates in a row

    def checks(self) -> list[tuple[bool, str]]:
        """(holds, what must hold) per setting; a role adds its own."""
        return [
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.param_dtype in PARAM_DTYPES, f"param_dtype must be one of {PARAM_DTYPES}"),
            (self.lr >= 0 and self.warmup_steps >= 0, "lr and warmup_steps must be >= 0"),
            (self.total_steps >= 1, "total_steps must be >= 1"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (self.micro_batch_tokens >= 1, "micro_batch_tokens must be >= 1"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1"),
        ]

    def __post_init__(self) -> None:
        for ok, message in self.checks():
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}; got {self}")


class TrainableRole:
    """One rank of a trainable role (module docstring). Subclasses set `role`,
    `fix` (the advice a non-finite update raises with) and `ckpt_tag`, and
    implement `_build`, which must set `self.module` (the sharded module that
    trains and is checkpointed) and call `_train_with`."""

    role = "role"
    fix = ""
    packing = False  # rows back to back in a micro-batch (the policy's option)

    def __init__(self, params: RoleParams, rank: int, world_size: int,
                 init_method: str | None, defer_join: bool) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"{type(self).__name__} rank={rank} must be in "
                             f"[0, world_size={world_size})")
        self.p, self.rank, self.world = params, rank, world_size
        self.device = pick_device(rank)
        keep_freed_memory(self.device)  # CPU: reuse activation pages across updates
        self._own_pg = False
        if not defer_join:
            self.join(init_method)

    def join(self, init_method: str | None) -> None:
        """Join the role's world at `init_method` and build the module; every rank
        calls it. `defer_join=True` leaves this to the caller, which first learns
        where rank 0 runs (on a cluster the rendezvous is rank 0's node IP, known
        only once Ray has placed it: workers/placement.py `join_world`)."""
        self._own_pg = init_process_group(self.device, self.rank, self.world, init_method)
        try:
            torch.manual_seed(self.p.seed)  # every rank builds the same initial weights
            self._build()
        except BaseException:
            self.shutdown()  # a half-built role must not leave its group behind
            raise

    def _build(self) -> None:
        raise NotImplementedError

    def _shard(self, module: nn.Module, layers: Iterable[nn.Module]) -> nn.Module:
        """fully_shard each decoder layer, then the root; gradients are SUMMED over
        ranks (losses are already global shares: rlft/learner/driver.py)."""
        module.to(self.device)
        shard_with_sum_reduction(module, layers, self.p.param_dtype)
        return module

    def _train_with(self, trainable: Iterable[nn.Parameter], forward: Callable,
                    diagnostics: Callable | None = None) -> None:
        """AdamW over `trainable`, the LR schedule and the loss driver."""
        p = self.p
        self.opt = torch.optim.AdamW(list(trainable), lr=p.lr, betas=p.betas, eps=p.eps,
                                     weight_decay=p.weight_decay,
                                     fused=self.device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(
            p.warmup_steps, p.total_steps, p.lr_schedule, p.min_lr_ratio))
        self.driver = LossDriver(self.role, self.module, forward, self.opt, self.sched,
                                 self._plan, self.device, self.world, p.max_grad_norm,
                                 p.max_nonfinite_steps, self.fix, diagnostics)

    def _plan(self, batch: TrainBatch) -> list[MicroBatch]:
        return world_plan(batch.attention_mask, self.p.micro_batch_tokens, self.packing,
                          self.device)

    def _cols(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        return self.driver.cols(t, mb)  # [b, cols]

    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        """One optimizer step over this rank's rows of the batch. Collective."""
        return self.driver.update(batch, terms)

    def release_memory(self) -> None:
        """Colocated mode, after the update: free cached GPU blocks for the engines."""
        release_cached_memory(self.device)

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self.driver.steps

    @property
    def nonfinite_in_a_row(self) -> int:
        return self.driver.nonfinite_in_a_row

    @property
    def ckpt_tag(self) -> Any:
        raise NotImplementedError

    def save(self, path: str) -> None:
        """Module, optimizer, scheduler, counters and RNG into the folder `path`
        (rlft/learner/checkpoint.py). Collective; every rank writes its shards."""
        learner_ckpt.save(path, self.module, self.opt, self.sched, self.driver.counters(),
                          self.rank, self.ckpt_tag)

    def load(self, path: str) -> None:
        """Restore a `save` folder (any world size). Collective. A continued run is
        bit-identical to an uninterrupted one on CPU."""
        self.driver.restore(learner_ckpt.load(path, self.module, self.opt, self.sched,
                                              self.rank, self.ckpt_tag))

    def shutdown(self) -> None:
        """Destroy the process group if this role created it."""
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._own_pg = False
