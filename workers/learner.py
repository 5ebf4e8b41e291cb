"""The learner: one per rank, FSDP2-sharded, algorithm-blind.

Its update is the shared `LossDriver` (rlft/learner/driver.py, the critic's
too): it sums the loss terms it is handed (`LossTermSpec`s from the algorithm
spec) and never branches on an algorithm's name. Each term is normalised by
counts over the whole step (all micro-batches, all ranks), and FSDP2 is told
to SUM gradients across ranks rather than average them, so an update does not
depend on how the batch was split into micro-batches or ranks. On CPU the
process group is gloo (a world of one by default); on GPUs, NCCL. This module
adds the reference model, LoRA, weight publishing and checkpoints.

Every method that touches model weights is collective: with a world of N, all
N ranks call it, in the same order (the lead's Ray actors do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from rlft.algos.base import GlobalCounts
from rlft.algos.contract import LossTermSpec
from rlft.algos.mismatch import mismatch_means, mismatch_sums
from rlft.learner import checkpoint as learner_ckpt
from rlft.learner import lora
from rlft.learner.distributed import (
    init_process_group,
    keep_freed_memory,
    pick_device,
    release_cached_memory,
    shard_with_sum_reduction,
    world_plan,
)
from rlft.learner.driver import (
    LR_SCHEDULES,
    LossDriver,
    NonFiniteError,
    Outputs,
    UpdateStats,
    lr_lambda,
)
from rlft.learner.lora import LoraParams
from rlft.learner.microbatch import MicroBatch, check_batch, stand_in_inputs
from rlft.learner.model import (
    ModelSource,
    PolicyLogprobs,
    build_model,
    compile_layers,
    local_source,
)
from rlft.types import TrainBatch, loss_mask
from rlft.workers.weight_sync import GROUPS, BroadcastSender, WeightUpdate, publish

__all__ = ["Learner", "LearnerParams", "LoraParams", "LossTermSpec", "NonFiniteError",
           "UpdateStats"]

log = logging.getLogger("rlft.learner")

PARAM_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LearnerParams:
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
    packing: bool = False  # rows back to back without padding (rlft/learner/packing.py)
    compile: bool = False  # torch.compile each decoder layer's forward
    logprob_chunk: int = 1024  # tokens per lm_head chunk (peak memory ~ chunk x V floats)
    # The rollout's sampling temperature: policy and reference log-probs (and
    # entropy) are those of softmax(logits / temperature), the distribution the
    # samples came from. Greedy rollouts (temperature 0) score at 1.
    temperature: float = 1.0
    grad_checkpointing: bool = False
    # Compute dtype. Master weights, optimizer state and gradient reduction stay
    # fp32; "bfloat16" casts the gathered parameters (FSDP2 mixed precision).
    param_dtype: str = "float32"
    seed: int = 0
    max_nonfinite_steps: int = 3  # raise after this many skipped updates in a row
    lora: LoraParams = field(default_factory=LoraParams)  # r > 0: train adapters only

    def __post_init__(self) -> None:
        checks = [
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.param_dtype in PARAM_DTYPES, f"param_dtype must be one of {PARAM_DTYPES}"),
            (self.lr >= 0 and self.warmup_steps >= 0, "lr and warmup_steps must be >= 0"),
            (self.total_steps >= 1, "total_steps must be >= 1"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (self.micro_batch_tokens >= 1, "micro_batch_tokens must be >= 1"),
            (self.logprob_chunk >= 1, "logprob_chunk must be >= 1"),
            (self.temperature > 0, "temperature must be > 0 (pass 1.0 for greedy rollouts)"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"LearnerParams: {message}; got {self}")


class Learner:
    """FSDP2 policy (+ optional frozen reference) with AdamW and an LR schedule.

    `model` / `ref_model`: a name for `rlft.models.load_causal_lm` (a folder, a
    hub id or a built-in alias such as "tiny-random"), or a factory returning a
    Hugging Face *ForCausalLM. Ranks build the same initial weights (same
    source, same seed).

    With `params.lora.r > 0` the policy gets peft LoRA adapters before sharding
    and the optimizer holds the adapters only. A `ref_model` equal to `model`
    is then not loaded: the reference is the policy with its adapters off.
    Outside the learner (weight sync, `named_weights`, merged export) the
    adapters are folded into plain weights under the base model's names.
    """

    def __init__(self, model: ModelSource, params: LearnerParams, rank: int = 0,
                 world_size: int = 1, init_method: str | None = None,
                 ref_model: ModelSource | None = None, defer_join: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"Learner rank={rank} must be in [0, world_size={world_size})")
        self.p, self.rank, self.world = params, rank, world_size
        self.device = pick_device(rank)
        keep_freed_memory(self.device)  # CPU: reuse activation pages across updates
        self._sender: BroadcastSender | None = None  # rank 0, broadcast weight transport
        self._own_pg = False
        # Names resolve (an alias is built) on this rank's node, before any process
        # group exists: inside one, transformers' save_pretrained leaves config.json
        # to global rank 0, and a rank > 0 would build a folder without it.
        self._sources = (local_source(model), local_source(ref_model))
        if not defer_join:
            self.join(init_method)

    def join(self, init_method: str | None) -> None:
        """Join the learner world at `init_method` and build the model; every
        rank calls it. `defer_join=True` leaves this to the caller, which first
        learns where rank 0 runs (on a cluster the rendezvous is rank 0's node
        IP, known only once Ray has placed it: workers/placement.py `join_world`)."""
        self._own_pg = init_process_group(self.device, self.rank, self.world, init_method)
        try:
            self._build(*self._sources)
        except BaseException:
            self.shutdown()  # a half-built learner must not leave its group behind
            raise

    def _build(self, model: ModelSource, ref_model: ModelSource | None) -> None:
        params = self.p
        torch.manual_seed(params.seed)
        lm = build_model(model)
        self._hf_config = getattr(lm, "config", None)
        self._gen_config = getattr(lm, "generation_config", None)
        if params.grad_checkpointing:
            # Non-reentrant checkpointing is the variant FSDP2 supports.
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The PeftModel injects adapters into `lm` in place; `lm` stays the module
        # that runs and is sharded (the adapters shard with their decoder layer).
        self.peft = lora.wrap(lm, params.lora) if params.lora.enabled else None
        self._lora_specs = lora.merge_specs(lm) if self.peft is not None else {}
        self.policy = self._shard(PolicyLogprobs(lm, params.logprob_chunk, params.packing,
                                                    params.temperature))
        self.ref = None
        self._ref_is_base = self.peft is not None and ref_model is not None and (
            ref_model is model or ref_model == model)
        if ref_model is not None and not self._ref_is_base:
            ref = build_model(ref_model).eval()
            ref.requires_grad_(False)
            self.ref = self._shard(PolicyLogprobs(ref, params.logprob_chunk, params.packing,
                                                      params.temperature))
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.trainable, lr=params.lr, betas=params.betas,
                                     eps=params.eps, weight_decay=params.weight_decay,
                                     fused=self.device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(
            params.warmup_steps, params.total_steps, params.lr_schedule, params.min_lr_ratio))
        self.driver = LossDriver(
            "policy", self.policy, self._forward, self.opt, self.sched, self._plan, self.device,
            self.world, params.max_grad_norm, params.max_nonfinite_steps,
            "lower the learning rate, check the rewards/advantages for NaN", self._mismatch)

    def _shard(self, module: PolicyLogprobs) -> PolicyLogprobs:
        """fully_shard each decoder layer, then the root (embeddings, norm, lm_head)."""
        module.to(self.device)
        if self.p.compile:
            compile_layers(module.lm.model.layers)
        shard_with_sum_reduction(module, module.lm.model.layers, self.p.param_dtype)
        return module

    # -- forward passes -----------------------------------------------------
    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, ref: bool = False,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """No-grad [B, L] log-probs of each token given the previous ones, and entropy.

        Scored positions: `mask` ([B, L] bool), by default `response_mask`;
        others (and position 0) are 0. Pass `batch.attention_mask` to score
        every token. Returns CPU float32 tensors. Collective.
        """
        module = self.policy if (not ref or self._ref_is_base) else self.ref
        if module is None:
            raise RuntimeError("compute_logprobs(ref=True) needs a reference model: construct "
                               "the Learner with ref_model=")
        adapters_off = self.peft.disable_adapter() if ref and self._ref_is_base else None
        with adapters_off or contextlib.nullcontext():
            return self._logprobs(module, batch, mask)

    def _logprobs(self, module: PolicyLogprobs, batch: TrainBatch, mask: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(batch)
        select = batch.response_mask if mask is None else mask
        if tuple(select.shape) != tuple(batch.input_ids.shape):
            raise ValueError(f"compute_logprobs mask has shape {tuple(select.shape)}; it must "
                             f"match input_ids {tuple(batch.input_ids.shape)}")
        select = select.bool() & batch.attention_mask.bool()
        module.eval()
        lp_out = torch.zeros(batch.input_ids.shape)  # [B, L]
        ent_out = torch.zeros(batch.input_ids.shape)  # [B, L]
        for mb in self._plan(batch):
            if not mb.real:
                module(*stand_in_inputs(self.device))
                continue
            ids, am = self._cols(batch.input_ids, mb), self._cols(batch.attention_mask, mb)
            lp, ent = module(ids, am, self._cols(select, mb))  # [b, cols]
            lp_out[mb.rows, :mb.cols] = lp.float().cpu()
            ent_out[mb.rows, :mb.cols] = ent.float().cpu()
        return lp_out, ent_out

    def _cols(self, t: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        return self.driver.cols(t, mb)

    def _plan(self, batch: TrainBatch) -> list[MicroBatch]:
        return world_plan(batch.attention_mask, self.p.micro_batch_tokens, self.p.packing,
                          self.device)

    # -- the update ---------------------------------------------------------
    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        """One optimizer step over this rank's rows of the batch (the shared
        `LossDriver`). Collective."""
        stats = self.driver.update(batch, terms)
        return dataclasses.replace(stats, metrics=mismatch_means(stats.metrics))

    def _mismatch(self, batch: TrainBatch, mb: MicroBatch, out: Outputs, first: torch.Tensor,
                  cnt: GlobalCounts) -> dict[str, torch.Tensor]:
        """`mismatch/*` sums: the engine's log-probs against the learner's pi_old
        (`old_logprobs` when the loop filled them, else this forward pass, which
        is pi_old on a batch's single update), over the tokens the engine sampled."""
        if batch.rollout_logprobs is None:
            return {}
        col = self.driver.cols
        mask = loss_mask(col(batch.response_mask, mb),
                         None if batch.prefix_mask is None else col(batch.prefix_mask, mb),
                         None if batch.expert_mask is None
                         else batch.expert_mask[mb.rows].to(self.device), "sampled", "policy")
        learner = out.logprobs if batch.old_logprobs is None else col(batch.old_logprobs, mb)
        return mismatch_sums(col(batch.rollout_logprobs, mb), learner, mask)

    def _forward(self, ids: torch.Tensor, am: torch.Tensor, select: torch.Tensor) -> Outputs:
        return Outputs(*self.policy(ids, am, select))

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

    # -- weights and checkpoints --------------------------------------------
    def named_weights(self, cpu: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) fp32 CPU weights under the model's own state_dict names;
        `cpu=False` leaves them on the learner's device (an engine on the same GPU
        then copies device to device, with no trip through host memory).

        With LoRA: the adapters merged in, under the base model's names (no
        `.base_layer`, no lora_* tensors), which is what rollout engines load.
        Collective and eager (every rank must call it; the gather happens before
        it returns). Only rank 0 gets the weights; other ranks get an empty
        iterator.
        """
        named = self._raw_weights(cpu_offload=cpu)
        return iter(lora.merged(named, self._lora_specs) if self.peft is not None else named)

    def _raw_weights(self, cpu_offload: bool = True) -> list[tuple[str, torch.Tensor]]:
        """The wrapped model's full state dict (adapters separate) on rank 0. Collective."""
        state = get_model_state_dict(self.policy, options=StateDictOptions(
            full_state_dict=True, cpu_offload=cpu_offload))
        return [(name.removeprefix("lm."), t) for name, t in state.items()]

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """`named_weights` as a dict on rank 0, None elsewhere. Collective."""
        state = dict(self.named_weights())
        return state if self.rank == 0 else None

    def weight_update(self, version: int, bucket_bytes: int = 256 << 20):
        """Publish the weights for the rollout engines (rank 0's result counts). Collective."""
        named = list(self.named_weights())
        return publish(named, version, bucket_bytes, use_ray=True) if self.rank == 0 else None

    # The broadcast transport (workers/weight_sync.py BroadcastSender): rank 0 sends.
    def init_sync_group(self, host: str, port: int, world: int, backend: str) -> None:
        """Rank 0 hosts the sync group's rendezvous at host:port and joins as its
        sender (blocks until all `world` ranks have joined); a group built
        before is closed first. Other ranks have no part in it."""
        if self.rank == 0:
            self._close_sync_group()
            self._sender = BroadcastSender(GROUPS.get(backend)(host, port, 0, world))

    def stage_weights(self, version: int, bucket_bytes: int = 256 << 20,
                      dtype: str | None = None) -> WeightUpdate | None:
        """Gather the weights for `send_weights`, cast to the engines' `dtype`;
        rank 0 returns the metadata-only update for the rollout workers, others
        None. Collective. Gathered to host memory one tensor at a time (never
        the whole fp32 model on rank 0's GPU); `send_weights` moves them to the
        GPU bucket by bucket."""
        named = list(self.named_weights(cpu=True))
        if self.rank != 0:
            return None
        return self._sync_sender().stage(named, version, bucket_bytes, dtype)

    def send_weights(self) -> int:
        """Rank 0 broadcasts the staged weights (while every engine worker
        receives); returns how many tensors. Other ranks: 0."""
        return self._sync_sender().send() if self.rank == 0 else 0

    def _sync_sender(self) -> BroadcastSender:
        if self._sender is None:
            raise RuntimeError("the broadcast weight transport needs learner rank 0 in a sync "
                               "group: call init_sync_group first (or use "
                               "rollout.weight_transport=ray)")
        return self._sender

    def _close_sync_group(self) -> None:
        if self._sender is not None:
            self._sender.group.close()
            self._sender = None

    def save(self, path: str) -> None:
        """Model, optimizer, scheduler, counters and RNG into the folder `path`
        (see `rlft.learner.checkpoint`). Collective; every rank writes its shards."""
        learner_ckpt.save(path, self.policy, self.opt, self.sched, self.driver.counters(), self.rank,
                        self.p.lora.tag())

    def load(self, path: str) -> None:
        """Restore a `save` folder (any world size). Collective. A continued run
        is bit-identical to an uninterrupted one on CPU."""
        self.driver.restore(learner_ckpt.load(path, self.policy, self.opt, self.sched,
                                              self.rank, self.p.lora.tag()))

    def export_hf(self, path: str, merged: bool = True) -> None:
        """A `save_pretrained` folder written by rank 0: the model (weights, adapters
        merged, + config), or with `merged=False` the LoRA adapter alone, for
        `PeftModel.from_pretrained(base, path)`. The tokenizer is the caller's.
        Collective."""
        if self._hf_config is None:  # checked on every rank, before the collective
            raise TypeError("export_hf needs a Hugging Face model (with .config); this "
                            "learner was built from a model without one")
        if not merged:
            if self.peft is None:
                raise ValueError("export_hf(merged=False) writes a LoRA adapter, but this "
                                 "learner has none (model.lora.r=0); export merged instead")
            raw = self._raw_weights()
            if self.rank == 0:
                lora.save_adapter(self.peft, raw, path)
            dist.barrier()
            return
        state = dict(self.named_weights())
        if self.rank == 0:
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):  # no throwaway random init of the full model
                model = AutoModelForCausalLM.from_config(self._hf_config)
            model.load_state_dict(state, assign=True)
            model.tie_weights()
            if self._gen_config is not None:
                model.generation_config = self._gen_config
            model.save_pretrained(path)
        dist.barrier()

    def shutdown(self) -> None:
        """Close the weight sync group; destroy the process group if this learner
        created it."""
        self._close_sync_group()
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._own_pg = False
