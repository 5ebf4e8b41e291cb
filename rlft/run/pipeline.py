"""Rollout ahead of the learner: bounded-staleness asynchronous training.

With `train.max_staleness = K >= 1` a producer thread in the driver runs a
step's collect (prompts -> rollout -> reward -> the algorithm's group filter,
DAPO's extra rounds included) for the next K steps while the learner updates
on the current one. Before every weight sync the loop waits for the producer
(`settle`), so weights change only between rollout batches, never while an
engine generates: every sample of a batch comes from one policy version, and a
batch taken at step t was sampled with the weights of step t - K or later.

`take` checks that bound anyway (`staleness`): a batch older than K versions
(after a lost rollout worker, say) is sampled again from the same prompts
(`stale_policy="regenerate"`) or replaced by fresh prompts ("drop"; counted).

With K = 0 nothing runs ahead: `take` calls the producer inline, in the order
and with the arguments of the synchronous loop.

Every batch records the sampler draws it consumed (draw index g = epoch * N +
position, `PromptSampler.drawn`): a checkpoint stores the sampler position
before the oldest batch not yet trained (`sampler_state`), so a resume draws
the in-flight batches again instead of skipping them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from rlft.data.sampler import PromptSampler
from rlft.types import Prompt, PromptBatch, ScoredRollouts

log = logging.getLogger("rlft")

STALE_POLICIES = ("regenerate", "drop")


class LostWeights(RuntimeError):
    """A rollout worker answered with other weights than the batch was submitted
    for (Ray restarted it): the driver re-sends the weights and samples again.
    The pipeline attaches `lost`, the batch's prompts and draws."""

    lost: Lost | None = None


@dataclass(frozen=True)
class Lost:
    """A batch to sample again: its step, each round's prompts, its draws."""

    step: int
    rounds: tuple[tuple[Prompt, ...], ...]
    draws: tuple[int, ...]
    sampler_before: dict


@dataclass(frozen=True)
class Collected:
    """One step's sampled data, as the producer left it."""

    step: int
    version: int  # the policy version that sampled every row
    prompts: PromptBatch  # the first round's requests
    scored: ScoredRollouts  # every round, for the metrics
    kept: ScoredRollouts  # what the step trains on
    extra: dict[str, float]
    seconds: dict[str, float]  # prompts / rollout / reward
    rounds: tuple[tuple[Prompt, ...], ...]  # each round's prompts, to sample again
    draws: tuple[int, ...] = ()  # sampler draw indices consumed
    sampler_before: dict = field(default_factory=dict)

    @property
    def trained_uids(self) -> set[str]:
        ro = self.kept.rollouts
        return {ro.row(b).uid for b in range(len(ro))}


# The producer: (step, policy version, each round's prompts) -> Collected; the
# pipeline fills in `draws` and `sampler_before`.
Produce = Callable[[int, int, Iterator[list[Prompt]]], Collected]


def staleness(trained_at: int, sampled_with: int) -> int:
    """Policy versions between the weights that sampled a batch and those it trains.

    >>> staleness(5, 4)
    1
    """
    return trained_at - sampled_with


@dataclass
class StepFlow:
    """What `take` and `settle` report for one step (the async/* metrics)."""

    wait_s: float = 0.0  # the learner side waited for sampled data
    rollout_busy_s: float = 0.0  # generation time spent in this step's window
    dropped: int = 0  # samples dropped for staleness
    regenerated: int = 0  # batches sampled again (too stale, or lost weights)
    dropped_draws: tuple[int, ...] = ()  # their sampler draws (the ledger records them)
    queue: int = 0  # batches sampled ahead, after this step's was taken


def flow_metrics(stale: int, flow: StepFlow, learner_busy_s: float, wall_s: float
                 ) -> dict[str, float]:
    """async/*: the staleness of the step's samples (every row of a batch has
    the batch's version, so mean = max), batches dropped or sampled again, the
    queue, the seconds the learner side waited for data, and the share of the
    step's wall time each role had no work (the rollout side: no generation).

    >>> m = flow_metrics(1, StepFlow(rollout_busy_s=1.5, queue=1), 1.0, 2.0)
    >>> m["async/staleness_max"], m["async/rollout_idle_frac"], m["async/learner_idle_frac"]
    (1.0, 0.25, 0.5)
    """
    wall = max(wall_s, 1e-9)
    return {"async/staleness_mean": float(stale), "async/staleness_max": float(stale),
            "async/dropped_stale": float(flow.dropped),
            "async/regenerated": float(flow.regenerated), "async/queue": float(flow.queue),
            "async/learner_wait_s": flow.wait_s, "time/step": wall_s,
            "async/rollout_idle_frac": min(max(1.0 - flow.rollout_busy_s / wall, 0.0), 1.0),
            "async/learner_idle_frac": min(max(1.0 - learner_busy_s / wall, 0.0), 1.0)}


class RolloutAhead:
    """K batches sampled ahead of the learner (K = `depth`), by one producer thread."""

    def __init__(self, produce: Produce, sampler: PromptSampler, depth: int,
                 stale_policy: str = "regenerate", steps: int | None = None) -> None:
        if depth < 0:
            raise ValueError(f"RolloutAhead depth (train.max_staleness) must be >= 0, got {depth}")
        if stale_policy not in STALE_POLICIES:
            raise ValueError(f"train.stale_policy={stale_policy!r}: choose one of "
                             f"{', '.join(STALE_POLICIES)}")
        self.produce, self.sampler, self.depth = produce, sampler, depth
        self.stale_policy = stale_policy
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead") if depth else None
        self._queue: deque[Future] = deque()
        self._new: list[Future] = []  # submitted during the current step
        self._next: int | None = None  # next step to submit
        self.steps = steps  # the run's last step + 1: nothing is sampled past it
        self._before: dict[int, dict] = {}  # step -> sampler state before its draws

    # -- the producer side -----------------------------------------------------
    def _run(self, step: int, version: int, again: Lost | None = None) -> Collected:
        """The producer for `step`: with the sampler, or `again`'s prompts."""
        before, first = self.sampler.state_dict(), self.sampler.drawn
        if again is None and self.depth:
            self._before[step] = before  # for a checkpoint, even if the producer fails
        source = (list(r) for r in again.rounds) if again else iter(self.sampler.next_batch, None)
        try:
            item = self.produce(step, version, source)
        except LostWeights as exc:
            if again is None:
                draws = tuple(range(first, self.sampler.drawn))
                size = self.sampler.batch_size
                prompts = [self.sampler.prompt_at(g) for g in draws]
                again = Lost(step, tuple(tuple(prompts[i:i + size])
                                         for i in range(0, len(prompts), size)), draws, before)
            exc.lost = again
            raise
        if again is not None:
            return replace(item, draws=again.draws, sampler_before=again.sampler_before)
        return replace(item, draws=tuple(range(first, self.sampler.drawn)), sampler_before=before)

    def _submit(self, version: int) -> None:
        fut = self._pool.submit(self._run, self._next, version)
        self._queue.append(fut)
        self._new.append(fut)
        self._next += 1

    # -- the learner side ----------------------------------------------------
    def take(self, step: int, version: int, on_lost: Callable[[], None]
             ) -> tuple[Collected, StepFlow]:
        """The batch to train at `step` with weights `version`; first tops the
        queue up to K batches ahead (sampled with `version`). `on_lost` re-sends
        the weights after a `LostWeights`. The batch's own `step` (its seeds)
        runs ahead of `step` once a batch was dropped for staleness."""
        flow = StepFlow()
        start = time.perf_counter()
        if self.depth == 0:
            item = self._run(step, version)  # inline: the synchronous loop
            flow.wait_s = time.perf_counter() - start
            flow.rollout_busy_s = item.seconds.get("rollout", 0.0)
            return item, flow
        if self._next is None or not self._queue:
            self._next = step
        while len(self._queue) <= self.depth and (self.steps is None or self._next < self.steps):
            self._submit(version)
        fut = self._queue.popleft()
        try:
            item = fut.result()
        except LostWeights as exc:
            log.warning("%s; re-sending the weights and sampling step %d again", exc, step)
            self.settle()
            on_lost()
            item = self._again(exc.lost, version, flow)
        flow.wait_s = time.perf_counter() - start
        if staleness(version, item.version) > self.depth:
            item = self._stale(item, version, flow)
        flow.queue = len(self._queue)
        self._before.pop(item.step, None)  # trained now
        return item, flow

    def _again(self, lost: Lost, version: int, flow: StepFlow) -> Collected:
        """Sample a batch's prompts again, inline (the producer idle), with the
        current weights; its draws stay the batch's."""
        flow.regenerated += 1
        self.settle()
        item = self._run(lost.step, version, lost)
        flow.rollout_busy_s += item.seconds.get("rollout", 0.0)
        return item

    def _stale(self, item: Collected, version: int, flow: StepFlow) -> Collected:
        log.warning("step %d: its batch was sampled with policy version %d, %d versions before "
                    "%d (train.max_staleness=%d); %s", item.step, item.version,
                    staleness(version, item.version), version, self.depth,
                    "sampling its prompts again" if self.stale_policy == "regenerate"
                    else "dropping it for fresh prompts")
        if self.stale_policy == "regenerate":
            return self._again(Lost(item.step, item.rounds, item.draws, item.sampler_before),
                               version, flow)
        # Dropped: the next batch in line takes its place (fresh prompts drawn now
        # would come after those sampled ahead, and a resume would draw them twice).
        self.settle()
        while staleness(version, item.version) > self.depth:
            flow.dropped += len(item.scored.rollouts)
            flow.dropped_draws += item.draws
            self._before.pop(item.step, None)
            if self._queue:
                item = self._queue.popleft().result()
            else:
                item = self._run(item.step, version)
                flow.rollout_busy_s += item.seconds.get("rollout", 0.0)
        return item

    def settle(self) -> float:
        """Wait until the producer is idle (before a weight sync); returns the
        seconds waited and books the step's generation time."""
        start = time.perf_counter()
        if self._queue:
            wait(list(self._queue))
        return time.perf_counter() - start

    def lost_weights(self) -> bool:
        """Whether a batch sampled ahead met a restarted rollout worker (call
        after `settle`): the next sync must rebuild the broadcast group."""
        return any(f.done() and isinstance(f.exception(), LostWeights) for f in self._queue)

    def step_rollout_seconds(self) -> float:
        """Generation seconds of the batches submitted since the last call (all
        finished once `settle` returned)."""
        done = [f for f in self._new if f.done() and f.exception() is None]
        self._new = [f for f in self._new if not f.done()]
        return sum(f.result().seconds.get("rollout", 0.0) for f in done)

    # -- checkpoints -----------------------------------------------------------
    def pending(self) -> list[Collected]:
        """Batches sampled ahead and not trained yet (call after `settle`)."""
        return [f.result() for f in self._queue if f.done() and f.exception() is None]

    def sampler_state(self) -> dict:
        """The sampler position before the oldest batch not yet trained (call
        after `settle`; a batch whose producer failed counts as not trained)."""
        if self._queue:
            if not all(f.done() for f in self._queue):
                raise RuntimeError("sampler_state while the producer runs: call settle() first")
            return self._before[min(self._before)]
        return self.sampler.state_dict()

    def inflight(self) -> list[dict]:
        """What was sampled ahead: step, policy version and draws of each batch."""
        return [{"step": c.step, "policy_version": c.version, "draws": list(c.draws)}
                for c in self.pending()]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _with(item: Collected, **changes) -> Collected:
    return replace(item, **changes)
