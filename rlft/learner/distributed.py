"""Process set-up and the collectives the loss driver needs: device, process
group (its store bound to rank 0's node address only), FSDP2 sharding with
sum reduction, the world-padded micro-batch plan, global counts and metric sums."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from datetime import timedelta

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
    """Join (or reuse) the default process group; True when this call created it.

    `init_method`: `tcp://HOST:PORT`, where HOST is rank 0's node (its IP on a
    cluster, 127.0.0.1 on one machine) and PORT free there; see `rendezvous`."""
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
        init_method = rendezvous("127.0.0.1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = bound_store(init_method, rank, world)
    if store is not None:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return True


def rendezvous(host: str) -> str:
    """`tcp://HOST:PORT` with a port free on `host`, an address of this machine:
    call it on the node that will host rank 0's store."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"tcp://{host}:{sock.getsockname()[1]}"


def bound_store(init_method: str, rank: int, world: int,
                timeout: timedelta | None = None) -> dist.TCPStore | None:
    """For a `tcp://HOST:PORT` rendezvous, a store that listens on HOST only.

    torch's TCPStore server listens on every interface, whatever host the URL
    names, and takes no password; rank 0 binds the port on HOST itself (its
    node IP on a cluster, loopback on one machine) and hands the socket over.
    Gloo is pointed at the interface that reaches HOST from this rank: left to
    itself it takes the address the machine's hostname resolves to, which
    need not be on the network the ranks share.
    """
    host, _, port = init_method.removeprefix("tcp://").rpartition(":")
    if not init_method.startswith("tcp://") or not host:
        return None
    host = "127.0.0.1" if host == "localhost" else host
    iface = interface_towards(host)
    if iface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
    fd = None
    if rank == 0:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen()
        fd = sock.detach()  # the store owns the socket from here on
    from torch.distributed.constants import default_pg_timeout

    return dist.TCPStore(host, int(port), world, rank == 0, timeout=timeout or default_pg_timeout,
                         master_listen_fd=fd)


def interface_towards(host: str) -> str | None:
    """The name of this machine's network interface whose address routes to
    `host` (Linux; None elsewhere or when no interface holds that address).

    >>> interface_towards("127.0.0.1")
    'lo'
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP: no packet is sent, the kernel only routes
            local = probe.getsockname()[0]
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    req = struct.pack("256s", name.encode()[:15])
                    addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24])
                except OSError:  # no IPv4 address on this interface
                    continue
            if addr == local:
                return name
    except (OSError, AttributeError):
        return None
    return None


SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(device: torch.device) -> bool:
    """On CPU, make glibc keep freed blocks in the process for reuse.

    By default a block over 32 MiB is its own mmap and goes back to the kernel
    when freed, as does free memory at the top of the heap: every update then
    first-touches its activations and log-prob chunks afresh, page by page, and
    a third of the learner's CPU time went to the kernel. Served from the heap
    and never trimmed, the next micro-batch reuses the same pages; the peak is
    unchanged. `RLFT_MALLOC_DEFAULT=1` keeps glibc's defaults (the benchmark's
    reference). Returns whether the settings were applied.
    """
    if device.type != "cpu" or os.environ.get("RLFT_MALLOC_DEFAULT") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 64 << 20)))


def release_cached_memory(device: torch.device) -> None:
    """Give the CUDA allocator's cached, unused blocks back to the device: in
    colocated mode the rollout engines wake into this GPU next and size nothing
    from what the learner only keeps cached. Nothing to do on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


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
