"""Learner -> rollout engines: versioned weight updates in buckets.

The learner's full weights are cut into buckets of about `bucket_bytes`; an
update carries the buckets (or handles to them) plus the policy version, and
the receiver walks them with `iter_update`, one bucket at a time, so at most
one bucket is held beyond the engine's own weights.

How a bucket travels is the update's `transport`, looked up in `TRANSPORTS`:
- "inline": the buckets themselves (same process; tests).
- "ray": Ray ObjectRefs; the sender `ray.put`s each bucket once and every
  engine `ray.get`s it (CPU clusters; the object store shares one copy per node).
The NCCL path for GPU clusters (learner rank 0 broadcasts each bucket over a
process group spanning learner and engines) comes with the vLLM engine: it
registers a transport whose buckets are (name, shape, dtype) metadata and whose
receiver posts the matching broadcasts. Nothing here pretends to do that yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlft.registry import Registry

Named = tuple[str, torch.Tensor]

# A transport's receiver turns one stored bucket into its (name, tensor) list.
TRANSPORTS: Registry[Callable[[Any], list[Named]]] = Registry("weight transport")


@TRANSPORTS.register("inline")
def _receive_inline(bucket: Any) -> list[Named]:
    return bucket


@TRANSPORTS.register("ray")
def _receive_ray(ref: Any) -> list[Named]:
    import ray  # only where this transport is used: importing ray costs ~1 s

    return ray.get(ref)


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
    buckets: tuple[Any, ...]  # list[Named] ("inline"), or a Ray ObjectRef to one ("ray")
    num_tensors: int  # checked on receipt, so a lost bucket cannot pass silently
    transport: str = "ray"

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"WeightUpdate.version must be >= 0, got {self.version}")
        TRANSPORTS.get(self.transport)  # fail at the sender, naming the valid transports


def publish(named: Iterable[Named], version: int, bucket_bytes: int = 256 << 20,
            use_ray: bool = True) -> WeightUpdate:
    """Bucket `named` into an update for version `version`.

    With `use_ray` each bucket goes into the Ray object store as it is formed
    (detached CPU copies, so engines on any node can read them); the update
    keeps the objects alive for as long as someone holds it.
    """
    transport = "ray" if use_ray else "inline"
    buckets: list[Any] = []
    count = 0
    for bucket in bucketize(((n, t.detach().cpu()) for n, t in named), bucket_bytes):
        count += len(bucket)
        if use_ray:
            import ray

            buckets.append(ray.put(bucket))
        else:
            buckets.append(bucket)
    return WeightUpdate(version=version, buckets=tuple(buckets), num_tensors=count,
                        transport=transport)


def iter_update(update: WeightUpdate) -> Iterator[Named]:
    """Every (name, tensor) of the update, fetching one bucket at a time."""
    receive = TRANSPORTS.get(update.transport)
    count = 0
    for i, stored in enumerate(update.buckets):
        bucket = receive(stored)
        if not isinstance(bucket, list):
            raise TypeError(f"weight update v{update.version}: bucket {i} holds "
                            f"{type(bucket).__name__}, expected a list of (name, tensor)")
        count += len(bucket)
        yield from bucket
    if count != update.num_tensors:
        raise ValueError(f"weight update v{update.version} carried {count} tensors but "
                         f"announced {update.num_tensors}: a bucket was lost or altered")
