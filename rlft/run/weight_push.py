"""The driver's side of weight sync: learner ranks -> every rollout worker.

Two transports (rollout.weight_transport, resolved by `rlft.run.wiring.weight_transport`):
- ray: the learner `ray.put`s its weights in buckets and every worker reads
  them from the object store (workers/weight_sync.py `publish`).
- broadcast: learner rank 0 and every engine worker form one sync group at
  start-up (`connect`); a sync gathers the weights to rank 0's host memory in
  the engines' dtype, hands the workers the metadata-only update and
  broadcasts the tensors bucket by bucket while they receive.

A rollout worker that Ray restarted has lost its place in the group, and the
others would wait on it at the next broadcast until the group's timeout. The
training loop notices the restart (its rollouts carry version 0) and calls
`push(version, rejoin=True)`: the whole group is built again on a fresh port
(every member replaces its old group), so later syncs stay on the broadcast
path, and the re-send itself goes over the new group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import ray

from rlft.workers.placement import rendezvous_address
from rlft.workers.weight_sync import sync_ranks

log = logging.getLogger("rlft")


class SyncTimeout(RuntimeError):
    """A weight push outlived `rollout.sync_timeout_s`; its hung workers are restarting."""


class WeightPush:
    """The driver pushing each new policy version to the rollout workers (the
    transports themselves, groups and buckets, are workers/weight_sync.py).
    `backend`: the sync group's ("gloo", "nccl"), or None for the ray
    transport. `workers_per_engine`: engine workers (sync group ranks) per
    rollout worker, its tensor-parallel size."""

    def __init__(self, learners: Sequence[Any], rollout: Sequence[Any], backend: str | None,
                 workers_per_engine: int = 1, dtype: str | None = None,
                 timeout_s: float = 300.0, verify: bool = True) -> None:
        self.learners, self.rollout = list(learners), list(rollout)
        self.backend, self.per_engine = backend, workers_per_engine
        self.dtype = dtype  # the engines' (broadcast: weights travel in it)
        self.timeout_s = timeout_s  # rollout.sync_timeout_s: a push's bound
        self.verify = verify  # rollout.verify_sync: fingerprints checked by every receiver

    @property
    def transport(self) -> str:
        return "ray" if self.backend is None else "broadcast"

    def connect(self) -> None:
        """Build the sync group: learner rank 0 hosts the rendezvous on its node;
        every member joins concurrently (each blocks until all have)."""
        if self.backend is None:
            return
        host, port = rendezvous_address(self.learners[0])
        world, firsts = sync_ranks([self.per_engine] * len(self.rollout))
        log.info("weight sync: %s broadcast group of %d ranks at %s:%d", self.backend, world,
                 host, port)
        t = self.timeout_s
        ray.get([self.learners[0].init_sync_group.remote(host, port, world, self.backend, t),
                 *[w.init_sync_group.remote(host, port, rank, world, self.backend, t)
                   for w, rank in zip(self.rollout, firsts)]])

    def push(self, version: int, rejoin: bool = False) -> None:
        """Load the learner's weights, as policy version `version`, into every
        rollout worker. Gathering full weights is collective: every learner rank
        takes part, rank 0's result is the update."""
        if self.backend is None:
            update = ray.get([lrn.weight_update.remote(version, verify=self.verify)
                              for lrn in self.learners])[0]
            self._adopted(version, ray.get([w.load_weights.remote(update) for w in self.rollout]))
            return
        if rejoin:
            self.connect()
        update = ray.get([lrn.stage_weights.remote(version, dtype=self.dtype, verify=self.verify)
                          for lrn in self.learners])[0]
        # Sender and receivers run together: each receiver posts the broadcasts
        # the metadata announces (and drains them if its load fails).
        send = self.learners[0].send_weights.remote()
        loads = [w.load_weights.remote(update) for w in self.rollout]
        pending, deadline = [send, *loads], time.monotonic() + self.timeout_s
        while pending:  # the first failure is raised at once (a lost worker: the loop rejoins)
            done, pending = ray.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                break
            ray.get(done)
        if pending:  # a member hangs: the others' groups time out too
            hung = [i for i, ref in enumerate(loads) if ref in pending]
            for i in hung:  # Ray restarts them (ray.max_restarts); the loop rejoins them
                ray.kill(self.rollout[i], no_restart=False)
            raise SyncTimeout(f"the weight push of version {version} did not finish within "
                              f"rollout.sync_timeout_s={self.timeout_s:g} s (rollout workers "
                              f"{hung} had not loaded it; restarting them)")
        self._adopted(version, ray.get([send, *loads])[1:])  # raises what a member raised

    @staticmethod
    def _adopted(version: int, versions: Sequence[int]) -> None:
        """Every rollout worker now claims the version pushed (a stale one stops the run)."""
        stale = {i: v for i, v in enumerate(versions) if v != version}
        if stale:
            raise RuntimeError(f"weight sync: rollout workers {sorted(stale)} report policy "
                               f"versions {sorted(set(stale.values()))} after version "
                               f"{version} was pushed to them")
