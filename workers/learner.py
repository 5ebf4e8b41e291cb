"""The learner: one per rank, FSDP2-sharded, algorithm-blind.

It sums the loss terms it is handed (`LossTermSpec`s from the algorithm spec),
each normalised by counts over the whole step — all micro-batches and all
ranks — so an update does not depend on how the batch was split. On CPU the
world is gloo (size 1 by default); on GPUs, NCCL.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from rlft.algos import losses  # noqa: F401  (registers the loss terms)
from rlft.algos.aggregation import aggregate, count
from rlft.algos.base import LOSSES, GlobalCounts, LossInputs
from rlft.algos.spec import LossTermSpec
from rlft.learn_utils import PolicyLogprobs, lr_lambda, micro_batches, rows_mask
from rlft.types import TrainBatch

log = logging.getLogger("rlft.learner")


@dataclass(frozen=True)
class LearnerParams:
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1
    lr_schedule: str = "constant"  # constant | cosine | linear, after warm-up
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch_tokens: int = 4096  # padded tokens per micro-batch
    logprob_chunk: int = 1024
    grad_checkpointing: bool = False
    dtype: str = "float32"
    seed: int = 0
    max_nonfinite_steps: int = 3


@dataclass(frozen=True)
class UpdateStats:
    loss: float
    grad_norm: float
    lr: float
    entropy: float
    tokens: int
    seconds: float
    skipped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # term metrics, token means


class NonFiniteError(RuntimeError):
    pass


class Learner:
    def __init__(self, model: str, params: LearnerParams, rank: int = 0, world_size: int = 1,
                 init_method: str | None = None, ref_model: str | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.p, self.rank, self.world = params, rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if torch.cuda.is_available() else torch.device("cpu")
        self._own_pg = not dist.is_initialized()
        if self._own_pg:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    init_method=init_method or _local_init(), rank=rank,
                                    world_size=world_size)
        torch.manual_seed(params.seed)
        dtype = getattr(torch, params.dtype)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        self.config = lm.config
        if params.grad_checkpointing:
            lm.gradient_checkpointing_enable()
        self.policy = self._shard(PolicyLogprobs(lm, params.logprob_chunk))
        self.ref = None
        if ref_model:
            ref = AutoModelForCausalLM.from_pretrained(ref_model, dtype=dtype).eval()
            ref.requires_grad_(False)
            self.ref = self._shard(PolicyLogprobs(ref, params.logprob_chunk))
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=params.lr, betas=params.betas,
                                     eps=params.eps, weight_decay=params.weight_decay,
                                     fused=self.device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(params))
        self.nonfinite_in_a_row = 0

    def _shard(self, module: PolicyLogprobs) -> Any:
        module.to(self.device)
        for layer in module.lm.model.layers:
            fully_shard(layer)
        return fully_shard(module)

    # -- forward passes ------------------------------------------------------
    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, ref: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] log-probs (position 0 gets 0) and entropy on response tokens."""
        module = self.ref if ref else self.policy
        if module is None:
            raise RuntimeError("compute_logprobs(ref=True) needs a reference model: "
                               "construct the Learner with ref_model=")
        lp = torch.zeros(batch.input_ids.shape)  # [B, L]
        ent = torch.zeros(batch.input_ids.shape)
        for rows, cols, real in micro_batches(batch, self.p.micro_batch_tokens,
                                              self._max_micro(batch)):
            mb = batch.select(rows)
            out_lp, out_ent = module(*self._inputs(mb, cols))
            if not real:
                continue
            lp[rows, :cols] = out_lp.cpu()
            ent[rows, :cols] = out_ent.cpu()
        return lp, ent

    def _inputs(self, mb: TrainBatch, cols: int):
        d = self.device
        return (mb.input_ids[:, :cols].to(d), mb.attention_mask[:, :cols].to(d),
                mb.response_mask[:, :cols].to(d))

    def _max_micro(self, batch: TrainBatch) -> int:
        """Every rank must run the same number of micro-batches (FSDP collectives)."""
        n = torch.tensor([len(list(micro_batches(batch, self.p.micro_batch_tokens, 0)))])
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        return int(n)

    # -- the update ----------------------------------------------------------
    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        start = time.perf_counter()
        self.policy.train()
        counts = [self._global_counts(batch, t) for t in terms]
        resp = self._all_sum(torch.tensor([float(batch.response_mask.sum())]))[0]
        sums = {"loss": torch.zeros(()), "entropy": torch.zeros(())}
        plan = list(micro_batches(batch, self.p.micro_batch_tokens, self._max_micro(batch)))
        for i, (rows, cols, real) in enumerate(plan):
            self.policy.set_requires_gradient_sync(i == len(plan) - 1)
            mb = batch.select(rows)
            lp, ent = self.policy(*self._inputs(mb, cols))  # [b, cols]
            if not real:  # padding micro-batch: joins the collectives, adds nothing
                (lp.sum() * 0.0).backward()
                continue
            total = self._terms_loss(mb, cols, lp, ent, terms, counts, sums)
            # FSDP averages gradients over ranks; each rank's loss is already a
            # share of the global sum, so scale back up to sum them.
            (total * self.world).backward()
            resp_mask = mb.response_mask[:, :cols].to(ent.device)
            sums["entropy"] += (ent.detach() * resp_mask).sum().cpu()
        return self._step(sums, resp, start)

    def _terms_loss(self, mb, cols, lp, ent, terms, counts, sums) -> torch.Tensor:
        total = torch.zeros((), device=lp.device)
        for term, cnt in zip(terms, counts):
            mask = rows_mask(mb, term.rows)[:, :cols].to(lp.device)
            out = LOSSES.get(term.loss)(_loss_inputs(mb, cols, lp, ent, mask), **term.params)
            value = aggregate(out.loss, mask, term.agg, cnt, term.norm_const)
            total = total + term.weight * value
            sums["loss"] += term.weight * value.detach().cpu()
            for name, metric in out.metrics.items():
                key = f"{term.loss}/{name}"
                sums.setdefault(key, torch.zeros(()))
                sums[key] += (metric.detach() * mask).sum().cpu() / max(cnt.tokens, 1)
        return total

    def _step(self, sums: dict, resp_tokens: torch.Tensor, start: float) -> UpdateStats:
        names = sorted(sums)
        reduced = self._all_sum(torch.stack([sums[n].float() for n in names]))
        values = dict(zip(names, reduced.tolist()))
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.p.max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.sched.get_last_lr()[0]
        skipped = not (math.isfinite(norm) and math.isfinite(values["loss"]))
        if skipped:
            self.nonfinite_in_a_row += 1
            log.warning("non-finite loss %.4g or grad norm %.4g: update skipped (%d in a row)",
                        values["loss"], norm, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.p.max_nonfinite_steps:
                raise NonFiniteError(f"{self.nonfinite_in_a_row} non-finite updates in a row; "
                                     f"lower train.lr or check the rewards "
                                     f"(limit: train.max_nonfinite_steps)")
        else:
            self.nonfinite_in_a_row = 0
            self.opt.step()
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        metrics = {k: v for k, v in values.items() if "/" in k}
        # Short names for the headline metrics whichever term produced them.
        for short in ("clip_frac", "kl"):
            found = [v for k, v in metrics.items() if k.endswith("/" + short)]
            if found:
                metrics[short] = found[0]
        return UpdateStats(loss=values["loss"], grad_norm=norm, lr=lr,
                           entropy=values["entropy"] / max(float(resp_tokens), 1.0),
                           tokens=int(resp_tokens), seconds=time.perf_counter() - start,
                           skipped=skipped, metrics=metrics)

    def _global_counts(self, batch: TrainBatch, term: LossTermSpec) -> GlobalCounts:
        local = count(rows_mask(batch, term.rows))
        t = self._all_sum(torch.tensor([float(local.tokens), float(local.seqs)]))
        return GlobalCounts(tokens=int(t[0]), seqs=int(t[1]))

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    # -- weights and checkpoints ----------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full CPU tensors with Hugging Face names. Collective: call on every
        rank; only rank 0 yields."""
        sd = get_model_state_dict(self.policy, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            for name, tensor in sd.items():
                yield name.removeprefix("lm."), tensor

    def full_state(self) -> dict[str, torch.Tensor] | None:
        state = dict(self.named_weights())
        return state if self.rank == 0 else None

    def weight_update(self, version: int, bucket_bytes: int = 256 << 20):
        """Publish the weights for the rollout engines (rank 0's result counts)."""
        from rlft.workers.weight_sync import publish

        named = list(self.named_weights())
        return publish(named, version, bucket_bytes, use_ray=True) if self.rank == 0 else None

    def save(self, path: str) -> None:
        """Model, optimizer, scheduler and counters as full state dicts (rank 0 writes)."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(self.policy, options=opts)
        optim = get_optimizer_state_dict(self.policy, self.opt, options=opts)
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            torch.save({"model": model, "optim": optim, "sched": self.sched.state_dict(),
                        "nonfinite_in_a_row": self.nonfinite_in_a_row},
                       os.path.join(path, "learner.pt"))
        dist.barrier()

    def load(self, path: str) -> None:
        """Every rank reads the file (a shared filesystem, as for the run folder)."""
        state = torch.load(os.path.join(path, "learner.pt"), weights_only=True)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.policy, state["model"], options=opts)
        set_optimizer_state_dict(self.policy, self.opt, state["optim"], options=opts)
        self.sched.load_state_dict(state["sched"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]

    def export_hf(self, path: str) -> None:
        """A Hugging Face model folder (weights + config) from rank 0."""
        state = dict(self.named_weights())
        if self.rank == 0:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(self.config)
            model.load_state_dict(state)
            model.save_pretrained(path)

    def shutdown(self) -> None:
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()


def _loss_inputs(mb: TrainBatch, cols: int, lp, ent, mask) -> LossInputs:
    def col(t):
        return None if t is None else t[:, :cols].to(lp.device)

    return LossInputs(logprobs=lp, response_mask=mask, advantages=col(mb.advantages), entropy=ent,
                      old_logprobs=col(mb.old_logprobs), ref_logprobs=col(mb.ref_logprobs),
                      rollout_logprobs=col(mb.rollout_logprobs), returns=col(mb.returns),
                      old_values=col(mb.values), prefix_mask=col(mb.prefix_mask))


def _local_init() -> str:
    from rlft.workers.placement import free_port

    return f"tcp://127.0.0.1:{free_port()}"
