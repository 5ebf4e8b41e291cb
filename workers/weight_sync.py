"""Learner -> rollout engines: versioned weight updates in buckets.

The learner's full weights are cut into buckets of about `bucket_bytes`; an
update carries the buckets (or handles to them) plus the policy version, and
the receiver walks them with `iter_update`, one bucket at a time, so at most
one bucket is held beyond the engine's own weights.

How a bucket travels is the update's `transport`, looked up in `TRANSPORTS`:
- "inline": the buckets themselves (same process; tests).
- "ray": Ray ObjectRefs; the sender `ray.put`s each bucket once and every
  engine `ray.get`s it (CPU clusters; the object store shares one copy per node).
- "nccl": (name, shape, dtype) metadata only. Learner rank 0 (`BroadcastSender`)
  broadcasts the tensors over a sync group spanning it (rank 0) and every
  engine worker (ranks 1..); each receiver allocates what the metadata says
  and posts the matching broadcasts, in the update's order. The group comes
  from `GROUPS`: "nccl" (vLLM's PyNccl over a StatelessProcessGroup, GPUs) or
  "gloo" (a torch gloo group outside torch.distributed's global state, CPU): the
  CPU tests run the very send/receive code of the GPU path over gloo.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import torch

from rlft.learner.distributed import bound_store
from rlft.registry import Registry
from rlft.workers.fingerprint import fingerprints, verified

Named = tuple[str, torch.Tensor]
Meta = tuple[str, list[int], str]  # (name, shape, dtype name) of one broadcast tensor


class SyncGroup(Protocol):
    """A broadcast group of learner rank 0 and the engines' workers."""

    rank: int
    device: torch.device  # where received tensors are allocated

    def broadcast(self, tensor: torch.Tensor, src: int) -> None: ...

    def close(self) -> None: ...


# A transport's receiver turns one stored bucket into its (name, tensor) list;
# `group` is the receiver's sync group (None where the transport needs none).
TRANSPORTS: Registry[Callable[[Any, SyncGroup | None], list[Named]]] = \
    Registry("weight transport")
# backend name -> factory(host, port, rank, world, timeout_s) of a SyncGroup.
GROUPS: Registry[Callable[..., SyncGroup]] = Registry("sync group backend")


@TRANSPORTS.register("inline")
def _receive_inline(bucket: Any, group: SyncGroup | None) -> list[Named]:
    return bucket


@TRANSPORTS.register("ray")
def _receive_ray(ref: Any, group: SyncGroup | None) -> list[Named]:
    import ray  # only where this transport is used: importing ray costs ~1 s

    return ray.get(ref)


@TRANSPORTS.register("nccl")
def _receive_broadcast(meta: Sequence[Sequence[Any]], group: SyncGroup | None) -> list[Named]:
    if group is None:
        raise RuntimeError("an 'nccl' weight update arrived but this receiver has no sync group; "
                           "join learner rank 0's group first (init_sync_group)")
    out = []
    for name, shape, dtype in meta:  # msgpack / pickle may have turned tuples into lists
        tensor = torch.empty(list(shape), dtype=getattr(torch, dtype), device=group.device)
        group.broadcast(tensor, src=0)
        out.append((name, tensor))
    return out


@GROUPS.register("gloo")
class GlooGroup:
    """A gloo process group of its own (TCPStore rendezvous, rank 0 hosts the
    store): it leaves torch.distributed's default group alone, which vLLM's
    workers and FSDP learners already use. Blocks until all `world` ranks join."""

    def __init__(self, host: str, port: int, rank: int, world: int,
                 timeout_s: float = 600.0) -> None:
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world, self.device = rank, world, torch.device("cpu")
        # Bound to rank 0's node address, gloo on the interface towards it (cross-node).
        self._store = bound_store(f"tcp://{host}:{port}", rank, world, timeout)
        self._pg = dist.ProcessGroupGloo(self._store, rank, world, timeout)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = src
        self._pg.broadcast([tensor], opts).wait()

    def close(self) -> None:
        self._pg = self._store = None


@GROUPS.register("nccl")
class NcclGroup:
    """vLLM's documented recipe for a trainer <-> engine group: a
    `StatelessProcessGroup` (TCP rendezvous, outside torch.distributed's global
    state) carrying a `PyNcclCommunicator` on this process's current GPU.
    Learner and engine workers must all build it with this class (vLLM's
    `unpinned_nccl_env`, where it exists, must apply on every side)."""

    def __init__(self, host: str, port: int, rank: int, world: int,
                 timeout_s: float = 600.0) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        try:  # vLLM >= 0.3x: communicators shared with outside processes drop vLLM's pins
            from vllm.utils.nccl import unpinned_nccl_env
        except ImportError:
            unpinned_nccl_env = contextlib.nullcontext
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.device = torch.device("cuda", torch.cuda.current_device())
        pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world,
                                          store_timeout=int(timeout_s))
        with unpinned_nccl_env():
            self._comm = PyNcclCommunicator(pg, device=self.device)
        if getattr(self._comm, "disabled", False):
            # PyNccl disables itself (broadcast becomes a no-op) when libnccl fails to load.
            raise RuntimeError(f"vLLM's PyNcclCommunicator is disabled in this process (rank "
                               f"{rank}, {self.device}): NCCL did not load; check "
                               "VLLM_NCCL_SO_PATH / the nccl package, or use the ray transport")

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        """Within `timeout_s`, or the communicator is aborted and this raises:
        NCCL itself would wait forever on a member that died or hangs."""
        stream = torch.cuda.current_stream()
        self._comm.broadcast(tensor, src=src, stream=stream)
        done = torch.cuda.Event()
        done.record(stream)
        deadline = time.monotonic() + self.timeout_s
        while not done.query():
            if time.monotonic() > deadline:
                self.close()  # ncclCommAbort (vLLM runs it in a thread of its own)
                raise TimeoutError(f"NCCL broadcast of a {tuple(tensor.shape)} tensor from rank "
                                   f"{src} did not finish within {self.timeout_s:g} s "
                                   "(rollout.sync_timeout_s); the sync group is aborted")
            time.sleep(0.0005)

    def close(self) -> None:
        destroy = getattr(self._comm, "destroy", None)  # older vLLM: freed with the object
        if destroy is not None:
            destroy()


def bucketize(named: Iterable[Named], bucket_bytes: int) -> Iterator[list[Named]]:
    """Group tensors, in order, into buckets of at most `bucket_bytes`
    (a tensor larger than that gets a bucket of its own).

    >>> t = torch.zeros
    >>> [[n for n, _ in b] for b in bucketize([("a", t(1)), ("b", t(1)), ("c", t(4))], 8)]
    [['a', 'b'], ['c']]
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: list[Named] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


@dataclass(frozen=True)
class WeightUpdate:
    """New policy weights, version `version` (= optimizer steps applied)."""

    version: int
    # list[Named] ("inline"), a Ray ObjectRef to one ("ray"), list[Meta] ("nccl")
    buckets: tuple[Any, ...]
    num_tensors: int  # checked on receipt, so a lost bucket cannot pass silently
    transport: str = "ray"
    fingerprint: dict[str, float] | None = None  # name -> sent tensor's (workers/fingerprint.py)

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"WeightUpdate.version must be >= 0, got {self.version}")
        TRANSPORTS.get(self.transport)  # fail at the sender, naming the valid transports


def publish(named: Iterable[Named], version: int, bucket_bytes: int = 256 << 20,
            use_ray: bool = True, verify: bool = True) -> WeightUpdate:
    """Bucket `named` into an update for version `version`.

    With `use_ray` each bucket goes into the Ray object store as it is formed
    (detached CPU copies, so engines on any node can read them); the update
    keeps the objects alive for as long as someone holds it.
    """
    transport = "ray" if use_ray else "inline"
    buckets: list[Any] = []
    count, sums = 0, {}
    for bucket in bucketize(((n, t.detach().cpu()) for n, t in named), bucket_bytes):
        count += len(bucket)
        sums.update(fingerprints(bucket) if verify else {})
        if use_ray:
            import ray

            buckets.append(ray.put(bucket))
        else:
            buckets.append(bucket)
    return WeightUpdate(version=version, buckets=tuple(buckets), num_tensors=count,
                        transport=transport, fingerprint=sums if verify else None)


def iter_buckets(update: WeightUpdate, group: SyncGroup | None = None) -> Iterator[list[Named]]:
    """Every bucket of the update as a (name, tensor) list, fetched one at a
    time; `group`: the receiver's sync group, for "nccl" updates. With the
    sender's fingerprints, each is checked before it is handed on
    (rollout.verify_sync, workers/fingerprint.py `verified`)."""
    received = _received(update, group)
    if update.fingerprint is None:
        return received
    return verified(received, update.fingerprint, update.version)


def _received(update: WeightUpdate, group: SyncGroup | None) -> Iterator[list[Named]]:
    receive = TRANSPORTS.get(update.transport)
    count = 0
    for i, stored in enumerate(update.buckets):
        bucket = receive(stored, group)
        if not isinstance(bucket, list):
            raise TypeError(f"weight update v{update.version}: bucket {i} holds "
                            f"{type(bucket).__name__}, expected a list of (name, tensor)")
        count += len(bucket)
        yield bucket
    if count != update.num_tensors:
        raise ValueError(f"weight update v{update.version} carried {count} tensors but "
                         f"announced {update.num_tensors}: a bucket was lost or altered")


def iter_update(update: WeightUpdate, group: SyncGroup | None = None) -> Iterator[Named]:
    """Every (name, tensor) of the update, fetching one bucket at a time."""
    for bucket in iter_buckets(update, group):
        yield from bucket


def load_buckets(update: WeightUpdate, load: Callable[[list[Named]], None],
                 group: SyncGroup | None = None) -> None:
    """Receive every bucket and hand it to `load`. Once `load` fails, the rest
    is still received, unloaded: a broadcasting sender would otherwise wait
    forever for receives that never come. Then the first error is raised."""
    error: Exception | None = None
    for bucket in iter_buckets(update, group):
        if error is None:
            try:
                load(bucket)
            except Exception as exc:  # re-raised below, after draining the sender
                error = exc
    if error is not None:
        raise error


def sync_ranks(workers_per_engine: Sequence[int]) -> tuple[int, list[int]]:
    """(world size, first rank of each engine) of a sync group: learner rank 0,
    then each engine's workers (its tensor-parallel ranks) in turn.

    >>> sync_ranks([2, 2, 1])
    (6, [1, 3, 5])
    """
    firsts, nxt = [], 1
    for n in workers_per_engine:
        firsts.append(nxt)
        nxt += n
    return nxt, firsts


class BroadcastSender:
    """Learner rank 0's side of the "nccl" transport, in two phases because
    receivers need the metadata before the first broadcast:

    1. `stage(named, version, dtype=...)`: keep the tensors (host memory, in
       the engines' dtype) and return the update, metadata only, for the
       rollout workers;
    2. `send()`, while every worker receives that update: broadcast them,
       bucket by bucket through the group's device.

    Wiring (rollout.weight_transport=broadcast): `Learner.init_sync_group`
    builds `BroadcastSender(GROUPS.get(backend)(host, port, 0, world))` on rank
    0; `Learner.stage_weights` gathers on every rank (`named_weights` is
    collective) and stages on rank 0; the driver (rlft/run/weight_push.py) then runs
    `Learner.send_weights` and every worker's `load_weights(update)` together.
    """

    def __init__(self, group: SyncGroup) -> None:
        if group.rank != 0:
            raise ValueError(f"BroadcastSender must be rank 0 of its sync group, got rank "
                             f"{group.rank}: receivers load updates, they do not send them")
        self.group = group
        self._staged: list[list[Named]] | None = None

    def stage(self, named: Iterable[Named], version: int, bucket_bytes: int = 256 << 20,
              dtype: str | None = None, verify: bool = True) -> WeightUpdate:
        """Keep the tensors where they are (host memory, from the learner's
        gather), floating ones cast to `dtype` (the engines'; None: as they are),
        and return the metadata-only update."""
        cast = getattr(torch, dtype) if dtype else None
        named = ((n, t.detach().to(cast) if cast is not None and t.is_floating_point()
                  else t.detach()) for n, t in named)
        buckets = list(bucketize(named, bucket_bytes))
        self._staged = buckets
        meta = tuple([(n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in b]
                     for b in buckets)
        return WeightUpdate(version=version, buckets=meta,
                            num_tensors=sum(len(b) for b in buckets), transport="nccl",
                            fingerprint=fingerprints(x for b in buckets for x in b)
                            if verify else None)

    def send(self) -> int:
        """Broadcast the staged tensors in the update's order, one bucket at a
        time on the group's device (at most one bucket there); returns how many."""
        if self._staged is None:
            raise RuntimeError("BroadcastSender.send() before stage(): nothing to broadcast")
        buckets, self._staged = self._staged, None
        sent = 0
        while buckets:
            bucket = buckets.pop(0)  # each host copy goes once its bucket is sent
            on_device = [t.to(self.group.device).contiguous() for _, t in bucket]
            for tensor in on_device:
                self.group.broadcast(tensor, src=0)
            sent += len(on_device)
            del on_device, bucket
        return sent


class WeightPublisher:
    """The learner side of the weight sync, mixed into `Learner`
    (workers/learner.py): `weight_update` publishes through the Ray object store;
    `init_sync_group`, `stage_weights` and `send_weights` run the broadcast
    transport, rank 0 sending. Needs `rank`, `named_weights(cpu)` and
    `_sender` (None until a group is joined) on the class it joins."""

    rank: int
    _sender: BroadcastSender | None

    def weight_update(self, version: int, bucket_bytes: int = 256 << 20, verify: bool = True):
        """Publish the weights for the rollout engines (rank 0's result counts), with
        their fingerprints when `verify`. Collective."""
        named = list(self.named_weights())
        return publish(named, version, bucket_bytes, True, verify) if self.rank == 0 else None

    # The broadcast transport (`BroadcastSender`): rank 0 sends.
    def init_sync_group(self, host: str, port: int, world: int, backend: str,
                        timeout_s: float = 300.0) -> None:
        """Rank 0 hosts the sync group's rendezvous at host:port and joins as its
        sender (blocks until all `world` ranks have joined); a group built
        before is closed first. Other ranks have no part in it. A broadcast
        that outlives `timeout_s` raises (rollout.sync_timeout_s)."""
        if self.rank == 0:
            self._close_sync_group()
            self._sender = BroadcastSender(GROUPS.get(backend)(host, port, 0, world, timeout_s))

    def stage_weights(self, version: int, bucket_bytes: int = 256 << 20,
                      dtype: str | None = None, verify: bool = True) -> WeightUpdate | None:
        """Gather the weights for `send_weights`, cast to the engines' `dtype`;
        rank 0 returns the metadata-only update for the rollout workers, others
        None. Collective. Gathered to host memory one tensor at a time (never
        the whole fp32 model on rank 0's GPU); `send_weights` moves them to the
        GPU bucket by bucket."""
        named = list(self.named_weights(cpu=True))
        if self.rank != 0:
            return None
        return self._sync_sender().stage(named, version, bucket_bytes, dtype, verify)

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
