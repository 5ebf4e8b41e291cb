"""The learner's plain pieces: the log-prob head, batch checks, the row
selector, the micro-batch plan, the learning-rate schedule, and process setup
(device, process group, model construction).

Nothing here runs a collective; `workers/learner.py` does and calls these.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from rlft.algos.base import GlobalCounts
from rlft.algos.logprobs import logprobs_from_hidden
from rlft.packing import pack, pack_rows, use_packed_attention
from rlft.types import TrainBatch

LR_SCHEDULES = ("constant", "cosine", "linear")
ROWS = ("policy", "expert", "all")
ModelSource = str | Callable[[], nn.Module]  # a name/folder, or a factory (tests, custom models)


class PolicyLogprobs(nn.Module):
    """Causal LM -> per-token log-probs and entropy on selected positions.

    Runs the decoder body (`lm.model`), then `logprobs_from_hidden` on the final
    hidden states of the selected tokens only, so [tokens, V] float logits are
    never built whole. Log-probs use the raw logits (temperature 1), the
    quantity the rollout engines report. Being one module lets FSDP2 shard it
    as the root: `lm_head` (tied to the embedding or not) is gathered by the
    root's forward hook like every other root parameter.
    """

    def __init__(self, lm: nn.Module, chunk: int, packed: bool = False) -> None:
        super().__init__()
        for attr in ("model", "lm_head"):
            if not hasattr(lm, attr):
                raise TypeError(f"the learner needs a Hugging Face *ForCausalLM with .model and "
                                f".lm_head; {type(lm).__name__} has no .{attr}")
        if not hasattr(lm.model, "layers"):
            raise TypeError(f"{type(lm).__name__}.model has no .layers (the decoder layers "
                            "FSDP2 shards one by one)")
        if packed:
            use_packed_attention(lm)
        self.lm, self.chunk, self.packed = lm, chunk, packed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, L] ids, mask, selection -> [b, L] log-probs and entropy (0 where unselected).

        Packed or padded, the same tokens are scored from the same contexts; a
        selected position 0 is never scored (it has no previous token).
        """
        select = select.bool() & attention_mask.bool()
        select[:, 0] = False
        if self.packed:  # one row of real tokens: token t is predicted at t-1 of its row
            p = pack(input_ids, attention_mask)
            hidden = self.lm.model(input_ids=p.input_ids, position_ids=p.position_ids,
                                   use_cache=False, **p.attention_kwargs()
                                   ).last_hidden_state[0]  # [T, H]
            sel = select[attention_mask.bool()][1:]  # [T-1]; row starts are never selected
            h, labels = hidden[:-1][sel], p.input_ids[0, 1:][sel]  # [N, H], [N]
        else:
            hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask.long(),
                                   use_cache=False).last_hidden_state  # [b, L, H]
            sel = select[:, 1:]  # [b, L-1]; token t is predicted at position t-1
            h, labels = hidden[:, :-1][sel], input_ids[:, 1:][sel]  # [N, H], [N]
        lp, ent = logprobs_from_hidden(h, self.lm.lm_head.weight, labels, self.chunk)  # [N], [N]
        zeros = torch.zeros(select.shape, dtype=lp.dtype, device=lp.device)  # [b, L]
        # Row-major order of the selected positions is the order of `lp` in both layouts.
        return zeros.masked_scatter(select, lp), zeros.masked_scatter(select, ent)  # [b, L]


def check_batch(batch: TrainBatch) -> None:
    """Shape and padding checks, so a bad batch fails here and not as a wrong loss."""
    shape = tuple(batch.input_ids.shape)
    if len(shape) != 2:
        raise ValueError(f"TrainBatch.input_ids must be [B, L]; got shape {shape}")
    for name in ("attention_mask", "response_mask", "advantages", "rollout_logprobs",
                 "old_logprobs", "ref_logprobs", "returns", "values", "prefix_mask"):
        value = getattr(batch, name)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"TrainBatch.{name} has shape {tuple(value.shape)}; it must match "
                             f"input_ids {shape} (one entry per token, aligned with input_ids)")
    if batch.expert_mask is not None and tuple(batch.expert_mask.shape) != shape[:1]:
        raise ValueError(f"TrainBatch.expert_mask has shape {tuple(batch.expert_mask.shape)}; "
                         f"it must be [B] = {shape[:1]}")
    if shape[0] == 0:
        return
    am = batch.attention_mask.bool()
    lengths = seq_lengths(am)
    if not torch.equal(am, torch.arange(shape[1], device=am.device)[None, :] < lengths[:, None]):
        raise ValueError("TrainBatch.attention_mask must be right-padded (ones, then zeros): "
                         "the learner trims padding columns and uses positions 0..n-1")
    if (batch.response_mask.bool() & ~am).any():
        raise ValueError("TrainBatch.response_mask marks padding tokens; it must lie inside "
                         "attention_mask")
    if batch.response_mask[:, 0].any():
        raise ValueError("TrainBatch.response_mask[:, 0] must be False: the first token has no "
                         "previous token to be scored from (put at least one prompt token first)")


def seq_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] right-padded mask -> [B] number of real tokens."""
    return attention_mask.long().sum(-1)  # [B]


def rows_mask(batch: TrainBatch, rows: str) -> torch.Tensor:
    """`response_mask` restricted to a term's rows ("policy", "expert", "all").

    Without an `expert_mask` every row is a policy row, so "expert" selects none.
    """
    if rows not in ROWS:
        raise ValueError(f"LossTermSpec.rows must be one of {', '.join(ROWS)}; got {rows!r}")
    resp = batch.response_mask.bool()
    if rows == "all":
        return resp
    expert = batch.expert_mask
    if expert is None:
        expert = torch.zeros(resp.shape[0], dtype=torch.bool, device=resp.device)
    keep = expert.bool() if rows == "expert" else ~expert.bool()  # [B]
    return resp & keep[:, None]  # [B, L]


@dataclass(frozen=True)
class MicroBatch:
    """Rows of the (local) batch and the columns they need.

    A micro-batch that is not `real` holds no rows: the learner runs a two-token
    stand-in so that a rank with fewer micro-batches still joins every FSDP
    collective its peers run.
    """

    rows: torch.Tensor  # [b] long, indices into the batch
    cols: int  # longest row of this micro-batch; later columns are padding
    real: bool = True


def plan_micro_batches(lengths: list[int], token_budget: int, packed: bool = False
                       ) -> list[MicroBatch]:
    """Greedy packing, longest rows first, while rows x longest row <= token_budget.

    Sorting by length keeps rows of similar length together, so trimming each
    micro-batch to its own longest row removes most padding. A row longer than
    the budget goes alone (rows are never split). `packed`: the model runs the
    rows without padding, so the budget caps their real tokens instead
    (`rlft.packing.pack_rows`).
    """
    if token_budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1; got {token_budget}")
    if packed:
        return [MicroBatch(torch.tensor(rows), lengths[rows[0]])
                for rows in pack_rows(lengths, token_budget)]
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])  # stable: ties keep row order
    plans: list[MicroBatch] = []
    current: list[int] = []
    for r in order:
        width = lengths[current[0]] if current else lengths[r]  # the first row is the longest
        if current and (len(current) + 1) * width > token_budget:
            plans.append(MicroBatch(torch.tensor(current), lengths[current[0]]))
            current = []
        current.append(r)
    if current:
        plans.append(MicroBatch(torch.tensor(current), lengths[current[0]]))
    return plans


def pad_plan(plan: list[MicroBatch], count: int) -> list[MicroBatch]:
    """Append stand-in micro-batches up to `count` (the most any rank has)."""
    filler = MicroBatch(torch.zeros(0, dtype=torch.long), 2, real=False)
    return plan + [filler] * (count - len(plan))


def stand_in_inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-token input for a stand-in micro-batch: ids, attention mask, selection."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)  # [1, 2]
    mask = torch.ones(1, 2, dtype=torch.bool, device=device)
    select = torch.tensor([[False, True]], device=device)
    return ids, mask, select


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


def term_names(losses: Sequence[str]) -> list[str]:
    """Metric prefixes for loss terms: the loss name, with "#i" when it appears twice."""
    return [name if list(losses).count(name) == 1 else f"{name}#{i}"
            for i, name in enumerate(losses)]


def add_to(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """Accumulate a detached figure without forcing a device sync."""
    sums[key] = sums[key] + value if key in sums else value


def build_model(source: ModelSource) -> nn.Module:
    """A causal LM in fp32 (the master weights) from a name/folder or a factory."""
    if callable(source):
        return source()
    from rlft.models import load_causal_lm

    return load_causal_lm(source, torch.float32)


def compile_layers(layers: Sequence[nn.Module]) -> None:
    """torch.compile each decoder layer's forward, in place.

    The forward, not the module call: FSDP2's gather/reshard hooks and
    activation checkpointing stay eager around the compiled body, and the
    state-dict names stay unprefixed (no `_orig_mod.`). Shapes change with
    every micro-batch, hence dynamic shapes from the start.
    """
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)


def pick_device(rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # Ray gives each learner actor one visible GPU; torchrun-style launches set LOCAL_RANK.
    local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def init_process_group(device: torch.device, rank: int, world: int,
                       init_method: str | None) -> bool:
    """Join (or reuse) the default process group; True when this call created it."""
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(
                f"a process group already exists (rank {dist.get_rank()} of "
                f"{dist.get_world_size()}) but the Learner was asked for rank {rank} of {world}")
        return False
    if init_method is None:
        if world != 1:
            raise ValueError(f"world_size={world} needs init_method (e.g. 'tcp://HOST:PORT', "
                             "the same on every rank)")
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = _loopback_store(init_method, rank, world)
    if store is not None:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return True


def _free_port() -> int:
    """A free loopback port (not rlft.workers.placement's: that module imports Ray,
    which a single-process learner, e.g. the benchmarks, must not need)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loopback_store(init_method: str, rank: int, world: int) -> dist.TCPStore | None:
    """For a `tcp://127.0.0.1:PORT` rendezvous, a store that listens on loopback only.

    torch's TCPStore server listens on every interface, whatever host the URL
    names, and takes no password; rank 0 binds the port on 127.0.0.1 itself and
    hands the socket over. Gloo is pointed at the loopback interface as well.
    """
    host, _, port = init_method.removeprefix("tcp://").rpartition(":")
    if not init_method.startswith("tcp://") or host not in ("127.0.0.1", "localhost"):
        return None
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    fd = None
    if rank == 0:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(port)))
        sock.listen()
        fd = sock.detach()  # the store owns the socket from here on
    from torch.distributed.constants import default_pg_timeout

    return dist.TCPStore("127.0.0.1", int(port), world, rank == 0, timeout=default_pg_timeout,
                         master_listen_fd=fd)


def shard_with_sum_reduction(module: nn.Module, layers: Sequence[nn.Module],
                             param_dtype: str) -> None:
    """fully_shard each decoder layer, then the root (embeddings, norm, head).

    Each rank's loss is already its share of the globally normalised loss, so
    the gradient is the SUM over ranks, not FSDP's default average. Sum-only
    collectives also suit gloo (no AVG/PREMUL_SUM). Learner and critic share this.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.set_gradient_divide_factor(1.0)
            sub.set_force_sum_reduction_for_comms(True)


def world_plan(attention_mask: torch.Tensor, token_budget: int, packed: bool,
               device: torch.device) -> list[MicroBatch]:
    """This rank's micro-batches, padded to the most any rank has: FSDP's
    all-gathers and reduce-scatters pair up across ranks call by call."""
    plan = plan_micro_batches(seq_lengths(attention_mask).tolist(), token_budget, packed)
    n = torch.tensor([len(plan)], device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return pad_plan(plan, int(n))


def global_counts(masks: Sequence[torch.Tensor], extra: Sequence[int], device: torch.device
                  ) -> tuple[list[GlobalCounts], list[int]]:
    """Per-mask (tokens, sequences) summed over all ranks, plus `extra` local counts summed."""
    local = list(extra) + [x for m in masks for x in (int(m.sum()), int(m.any(-1).sum()))]
    totals = torch.tensor(local, dtype=torch.long, device=device)
    dist.all_reduce(totals)
    t, k = totals.tolist(), len(extra)
    return [GlobalCounts(tokens=t[k + 2 * i], seqs=t[k + 2 * i + 1])
            for i in range(len(masks))], t[:k]


def reduce_sums(sums: dict[str, torch.Tensor], always: Sequence[str], world: int,
                device: torch.device) -> dict[str, float]:
    """Sum the named metric sums over ranks. A rank without rows has seen no
    metric names, so the ranks agree on the union of names first."""
    keys: list[list[str]] = [[] for _ in range(world)]
    dist.all_gather_object(keys, sorted(sums))
    names = sorted(set().union(*keys, always))
    zero = torch.zeros((), dtype=torch.float64, device=device)
    local = torch.stack([sums.get(n, zero).double() for n in names])  # [K]
    dist.all_reduce(local)
    return dict(zip(names, local.tolist()))
