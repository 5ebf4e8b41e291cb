"""The learner: one per rank, FSDP2-sharded, algorithm-blind.

Its update is the shared `LossDriver` (rlft/learner/driver.py, the critic's
too): it sums the loss terms it is handed (`LossTermSpec`s from the algorithm
spec) and never branches on an algorithm's name. Each term is normalised by
counts over the whole step (all micro-batches, all ranks), and FSDP2 is told
to SUM gradients across ranks rather than average them, so an update does not
depend on how the batch was split into micro-batches or ranks. On CPU the
process group is gloo (a world of one by default); on GPUs, NCCL. What every
trainable role shares (the process group, sharding, optimizer, micro-batch
plan, checkpoints) is workers/trainable.py's `TrainableRole`; weight
publishing is `WeightPublisher` (workers/weight_sync.py). This module adds
the policy's own: log-probs, the reference model, LoRA and export.

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
from rlft.learner import lora
from rlft.learner.driver import NonFiniteError, Outputs, UpdateStats
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
from rlft.workers.trainable import RoleParams, TrainableRole
from rlft.workers.weight_sync import WeightPublisher

__all__ = ["Learner", "LearnerParams", "LoraParams", "LossTermSpec", "NonFiniteError",
           "UpdateStats"]

log = logging.getLogger("rlft.learner")

@dataclass(frozen=True)
class LearnerParams(RoleParams):
    """The shared settings (workers/trainable.py `RoleParams`) and the policy's own."""

    packing: bool = False  # rows back to back without padding (rlft/learner/packing.py)
    compile: bool = False  # torch.compile each decoder layer's forward
    logprob_chunk: int = 1024  # tokens per lm_head chunk (peak memory ~ chunk x V floats)
    # The rollout's sampling temperature: policy and reference log-probs (and
    # entropy) are those of softmax(logits / temperature), the distribution the
    # samples came from. Greedy rollouts (temperature 0) score at 1.
    temperature: float = 1.0
    lora: LoraParams = field(default_factory=LoraParams)  # r > 0: train adapters only

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(),
                (self.logprob_chunk >= 1, "logprob_chunk must be >= 1"),
                (self.temperature > 0, "temperature must be > 0 (pass 1.0 for greedy rollouts)")]


class Learner(TrainableRole, WeightPublisher):
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

    role, fix = "policy", "lower the learning rate, check the rewards/advantages for NaN"

    def __init__(self, model: ModelSource, params: LearnerParams, rank: int = 0,
                 world_size: int = 1, init_method: str | None = None,
                 ref_model: ModelSource | None = None, defer_join: bool = False) -> None:
        self._sender = None  # rank 0, broadcast weight transport (WeightPublisher)
        # Names resolve (an alias is built) on this rank's node, before any process
        # group exists: inside one, transformers' save_pretrained leaves config.json
        # to global rank 0, and a rank > 0 would build a folder without it.
        self._sources = (local_source(model), local_source(ref_model))
        super().__init__(params, rank, world_size, init_method, defer_join)

    @property
    def packing(self) -> bool:  # type: ignore[override]
        return self.p.packing

    @property
    def ckpt_tag(self) -> str:
        return self.p.lora.tag()

    def _build(self) -> None:
        (model, ref_model), params = self._sources, self.p
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
        self.policy = self.module = self._shard_lm(lm)
        self.ref = None
        self._ref_is_base = self.peft is not None and ref_model is not None and (
            ref_model is model or ref_model == model)
        if ref_model is not None and not self._ref_is_base:
            ref = build_model(ref_model).eval()
            ref.requires_grad_(False)
            self.ref = self._shard_lm(ref)
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self._train_with(self.trainable, self._forward, self._mismatch)

    def _shard_lm(self, lm: torch.nn.Module) -> PolicyLogprobs:
        """The causal LM behind `PolicyLogprobs`, each decoder layer sharded."""
        p = self.p
        module = PolicyLogprobs(lm, p.logprob_chunk, p.packing, p.temperature)
        if p.compile:
            compile_layers(module.lm.model.layers)
        return self._shard(module, module.lm.model.layers)

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

    # -- the update ---------------------------------------------------------
    def update(self, batch: TrainBatch, terms: Sequence[LossTermSpec]) -> UpdateStats:
        """One optimizer step over this rank's rows of the batch (the shared
        `LossDriver`), `mismatch/*` as means. Collective."""
        stats = super().update(batch, terms)
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
        super().shutdown()
