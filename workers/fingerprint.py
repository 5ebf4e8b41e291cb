"""Every weight sync verified end to end (`rollout.verify_sync`).

The sender (learner rank 0) puts a fingerprint of each tensor it sends into the
update's metadata (`WeightUpdate.fingerprint`), taken from the very tensors
that travel (after the cast to the engines' dtype). Each receiver fingerprints
every tensor as it arrives, before loading it (`check_bucket`), and at the end
checks that every tensor sent arrived (`check_complete`); the driver checks
that every worker adopted the version pushed. A corrupted, skipped or extra
tensor, or a stale version, stops the run with the tensor's name, the version
and (from the driver) the worker.

A fingerprint is a float64 sum over a fixed strided sample of the tensor (at
most SAMPLE elements, position-weighted so a reordering shows), always taken on
the CPU: both sides sum the same values in the same order, so equal tensors
give bit-equal fingerprints on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import torch

SAMPLE = 4096  # elements per tensor: the cost stays flat however large the model


def tensor_fingerprint(t: torch.Tensor) -> float:
    """The tensor's fingerprint (module docstring): values and order both count.

    >>> tensor_fingerprint(torch.tensor([1.0, 2.0])), tensor_fingerprint(torch.tensor([2.0, 1.0]))
    (5.0, 4.0)
    """
    flat = t.detach().reshape(-1)
    x = flat[::max(1, flat.numel() // SAMPLE)][:SAMPLE].to("cpu", torch.float64)
    weights = torch.arange(x.numel(), dtype=torch.float64) % 7 + 1
    return float((x * weights).sum())


def fingerprints(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    return {name: tensor_fingerprint(t) for name, t in named}


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def check_bucket(expected: Mapping[str, float], bucket: Iterable[tuple[str, torch.Tensor]],
                 version: int, seen: set[str]) -> None:
    """Each arrived tensor against the sender's fingerprint; adds its name to `seen`."""
    for name, t in bucket:
        if name not in expected:
            raise ValueError(f"weight sync of version {version}: {name!r} arrived but the "
                             f"learner did not send it")
        got = tensor_fingerprint(t)
        if not _same(got, expected[name]):
            raise ValueError(f"weight sync of version {version}: tensor {name!r} arrived "
                             f"different from what the learner sent (fingerprint {got!r}, "
                             f"sent {expected[name]!r}): corrupted in transit")
        seen.add(name)


def check_complete(expected: Mapping[str, float], seen: set[str], version: int) -> None:
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"weight sync of version {version}: {len(missing)} tensor(s) the "
                         f"learner sent never arrived (e.g. {', '.join(missing[:3])})")


def verified(buckets: Iterator[list], expected: Mapping[str, float], version: int
             ) -> Iterator[list]:
    """`buckets` as they arrive, each checked before it is handed on. After a bad
    one nothing more is handed on, but the rest is still received (a
    broadcasting sender waits for every receive), then the error is raised."""
    seen: set[str] = set()
    bad: ValueError | None = None
    for bucket in buckets:
        if bad is None:
            try:
                check_bucket(expected, bucket, version, seen)
            except ValueError as exc:
                bad = exc
        if bad is None:
            yield bucket
    if bad is not None:
        raise bad
    check_complete(expected, seen, version)
