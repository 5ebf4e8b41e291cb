"""Calls into rollout workers that Ray may be restarting (ray.max_restarts):
a worker whose node died is unavailable until Ray has started it elsewhere.
Moved out of rlft/loop.py; the loop's generate and weight sync use them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

T = TypeVar("T")

log = logging.getLogger("rlft")


def through_restarts(call: Callable[[], T], rollout: Sequence[Any], timeout_s: float) -> T:
    """`call()`, a call into the rollout workers. When one is unavailable (its
    node died; Ray restarts it elsewhere, ray.max_restarts), wait for every
    worker to answer again, `timeout_s` (ray.restart_timeout_s) at most, and
    call again: a restarted worker answers with policy version 0 and gets the
    weights."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except ray.exceptions.ActorUnavailableError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("a rollout worker is unavailable (%s); waiting up to %.0f s for "
                        "Ray to restart it", str(exc).splitlines()[0][:200],
                        deadline - time.monotonic())
            wait_for_rollout(rollout, deadline)


def rollout_lost(rollout: Sequence[Any]) -> bool:
    """Whether some rollout worker does not answer within 10 s."""
    try:
        ray.get([w.policy_version.remote() for w in rollout], timeout=10)
        return False
    except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
        return True


def wait_for_rollout(rollout: Sequence[Any], deadline: float) -> None:
    """Until every rollout worker answers, or `deadline` (time.monotonic) passes."""
    while True:
        try:
            ray.get([w.policy_version.remote() for w in rollout],
                    timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            return
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() >= deadline:
                return  # the caller's next call raises what is wrong
            time.sleep(1.0)
