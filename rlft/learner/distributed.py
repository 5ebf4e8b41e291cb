"""Process set-up and the collectives the loss driver needs: device, process
group (with a loopback-only store for a local rendezvous), FSDP2 sharding with
sum reduction, the world-padded micro-batch plan, global counts and metric sums."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from rlft.algos.base import GlobalCounts
from rlft.learner.microbatch import MicroBatch, pad_plan, plan_micro_batches, seq_lengths


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
