"""Learner -> rollout engines: versioned weight updates in buckets.

On CPU clusters and in tests the buckets travel through the Ray object store:
the learner `ray.put`s each bucket, the update carries only the references,
and each engine fetches and loads one bucket at a time (bounded memory). On
GPU clusters the same buckets go over an NCCL broadcast from learner rank 0
(`transport="nccl"`, written with the vLLM engine's weight-update path).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

Named = tuple[str, torch.Tensor]


def bucketize(named: Iterable[Named], bucket_bytes: int) -> Iterator[list[Named]]:
    """Group tensors, in order, into buckets of at most `bucket_bytes`
    (a tensor larger than that gets a bucket of its own)."""
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
    buckets: tuple[Any, ...]  # list[Named] in-process, or a Ray ObjectRef to one
    num_tensors: int


def publish(named: Iterable[Named], version: int, bucket_bytes: int = 256 << 20,
            use_ray: bool = True) -> WeightUpdate:
    buckets = []
    count = 0
    for bucket in bucketize(named, bucket_bytes):
        count += len(bucket)
        if use_ray:
            import ray

            buckets.append(ray.put(bucket))
        else:
            buckets.append(bucket)
    return WeightUpdate(version=version, buckets=tuple(buckets), num_tensors=count)


def iter_update(update: WeightUpdate) -> Iterator[Named]:
    """Every (name, tensor) of the update, fetching one bucket at a time."""
    for bucket in update.buckets:
        if not isinstance(bucket, list):
            import ray

            bucket = ray.get(bucket)
        yield from bucket
