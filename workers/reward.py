"""RewardService: score a batch in reward processes, with a time limit per call.

Isolation is by process. Each sample is scored by every term in one process;
a call that raises, returns NaN/inf/a non-number, hangs past `timeout_s`, or
kills its process (segfault, `os._exit`) costs only that sample: it gets
`fallback`, its failure kind is counted in `ScoredRollouts.failures`, and the
first failure of each kind per reward is logged (logger "rlft.reward") with
the sample's prompt uid. A hung or dead process is replaced; the rest of its
chunk is re-queued. More than `max_failure_frac` failed samples in one batch
raises `RewardFailureError` (a broken reward should stop the run, not train it
on the fallback).

Composite reward: total = sum of weight * term total over the terms that apply;
a term returning `None` is skipped (not renormalised); a sample where every term
is `None` gets `fallback` and is not a failure (every component is NaN there).

Output: reward processes send fds 1/2 to /dev/null and Python's stdout/stderr to
a buffer of the first 500 characters per chunk; the first non-empty one is
logged once at INFO. Debug prints with `num_workers=0` (in-process, serial, no
time limit) or `rlft reward check --workers 0`.

Speed: processes are spawned once ('spawn' is safe with torch imported and
inside Ray actors; they import no torch, ~0.3 s each) and reused; work goes out
in chunks (about four per process). When the measured cost of a batch is under
`inline_max_s`, it is scored in this process instead (a thread, same per-call
limit): for cheap rewards the pool's messaging costs more than the work.
Batched terms (models) always stay in the pool. If an in-process call
hangs, its thread is abandoned, that sample times out and the service stays on
the pool from then on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import torch

from rlft.rewards.base import RewardTerm, is_batched, load_term, run_setup, term_labels
from rlft.rewards.runner import (
    BATCH,
    IDLE,
    BoundedText,
    Fatal,
    Item,
    Outcome,
    Ready,
    Results,
    score_chunk,
    worker_main,
)
from rlft.types import RewardFailures, Rollouts, ScoredRollouts

log = logging.getLogger("rlft.reward")
CHUNKS_PER_WORKER = 4
STARTUP_TIMEOUT_S = 120.0
# Torch-free modules the fork server imports up front (see `start_method`).
PRELOAD = ("rlft.rewards.runner", "rlft.rewards.accuracy", "rlft.rewards.format",
           "rlft.rewards.json_structure", "rlft.rewards.tool_call", "math_verify", "jsonschema")


class RewardFailureError(RuntimeError):
    """Too many samples of one batch failed their reward (see `reward.max_failure_frac`)."""


@dataclass
class _Proc:
    proc: Any  # multiprocessing Process
    conn: Any  # parent end of its Pipe
    state: Any  # shared doubles: [sample index or IDLE/BATCH, call start (monotonic), term]
    ready: bool = False
    chunk: list[Item] = field(default_factory=list)  # sent, no result yet


class RewardService:
    def __init__(self, terms: Sequence[RewardTerm], num_workers: int = 2, timeout_s: float = 30.0,
                 fallback: float = 0.0, max_failure_frac: float = 0.5,
                 inline_max_s: float = 0.05, start_method: str = "forkserver") -> None:
        if not terms:
            raise ValueError("RewardService needs at least one RewardTerm (reward.terms is empty)")
        if num_workers < 0 or not timeout_s > 0 or not 0.0 <= max_failure_frac <= 1.0:
            raise ValueError(f"RewardService: need num_workers >= 0 (got {num_workers}), "
                             f"timeout_s > 0 (got {timeout_s}), 0 <= max_failure_frac <= 1 "
                             f"(got {max_failure_frac}); see reward.* in the config")
        self.terms = list(terms)
        self.labels = term_labels(self.terms)
        self._fns = [load_term(t) for t in self.terms]  # a bad name, path or kwarg fails here
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self.fallback, self.max_failure_frac = float(fallback), max_failure_frac
        self.inline_max_s = inline_max_s
        self._cost: float | None = None  # measured seconds per sample, all terms
        self._inline_ok = num_workers > 0 and inline_max_s > 0 and not any(
            is_batched(fn) for fn in self._fns)
        self._set_up = False  # setup hooks run in this process (num_workers=0 / inline)
        self._logged: set[tuple[str, str]] = set()
        self._output_logged = False
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports these once; each reward process forks from it
            # with them loaded, so a replacement starts in ~0.1 s instead of
            # re-importing sympy for seconds while its samples wait.
            self._ctx.set_forkserver_preload(list(PRELOAD))
        self._procs = [self._start() for _ in range(num_workers)]

    # ---- public -----------------------------------------------------------------------

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        return self.score_outcomes(rollouts)[0]

    def score_outcomes(self, rollouts: Rollouts
                       ) -> tuple[ScoredRollouts, list[tuple[Outcome, ...]]]:
        """`score`, plus each sample's Outcome per term (failure kind and message included),
        which `ScoredRollouts` only counts; `rlft reward check` prints them."""
        start = time.perf_counter()
        # Multi-turn: the completion is the final answer; `conversation` (messages, calls,
        # tool results) reaches every reward as a keyword, beside the row's fields.
        # With rollout.env, the episode's end state too (`state`, None if it was lost).
        talk, ends = rollouts.conversation, rollouts.episodes
        items = [Item(b, rollouts.response_text[b], rollouts.row(b).text,
                      {**rollouts.row(b).fields, **({"conversation": list(talk[b])} if talk else {}),
                       **({"state": ends[b].state} if ends and ends[b] is not None else {})})
                 for b in range(len(rollouts))]
        results = self.outcomes(items)
        scored = self._assemble(rollouts, results, time.perf_counter() - start)
        return scored, [results[b] for b in range(len(rollouts))]

    def outcomes(self, items: list[Item]) -> dict[int, tuple[Outcome, ...]]:
        """Each item's Outcome per term, keyed by `Item.index`, under the service's
        isolation and time limit: a call that fails is an Outcome; only processes that cannot
        start raise (tool calls use this: `rlft.workers.tools`)."""
        results: dict[int, tuple[Outcome, ...]] = {}
        if self.num_workers == 0:
            self._setup_here()
            results.update(score_chunk(self.terms, self._fns, items, lambda *_: None))
        else:
            if self._inline_ok and self._cost is not None \
                    and self._cost * len(items) <= self.inline_max_s:
                items = self._run_inline(items, results)
            if items:
                self._run_pool(items, results)
        return results

    def close(self) -> None:
        for p in self._procs:
            if p.proc.is_alive():
                try:
                    p.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass  # already exiting; the join/kill below settles it
                p.proc.join(timeout=2)
                if p.proc.is_alive():
                    p.proc.kill()
                    p.proc.join()
        self._procs = []

    def __enter__(self) -> RewardService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- processes --------------------------------------------------------------------

    def _start(self) -> _Proc:
        parent, child = self._ctx.Pipe()
        state = self._ctx.Array("d", [IDLE, 0.0, 0.0], lock=False)
        proc = self._ctx.Process(target=worker_main, args=(child, self.terms, state),
                                 daemon=True, name="rlft-reward")
        proc.start()
        child.close()
        return _Proc(proc, parent, state)

    def _run_pool(self, items: list[Item], results: dict) -> None:
        size = max(1, math.ceil(len(items) / (CHUNKS_PER_WORKER * len(self._procs))))
        queue = deque(items[i:i + size] for i in range(0, len(items), size))
        started = time.monotonic()
        while queue or any(p.chunk for p in self._procs):
            for p in self._procs:
                if queue and p.ready and not p.chunk:
                    p.chunk = list(queue.popleft())
                    p.conn.send(p.chunk)
            if not any(p.ready for p in self._procs) \
                    and time.monotonic() - started > STARTUP_TIMEOUT_S:
                self.close()
                raise RewardFailureError(f"no reward process started within "
                                         f"{STARTUP_TIMEOUT_S:.0f} s")
            self._collect(results, queue)
            self._enforce_limits(results, queue)

    def _collect(self, results: dict, queue: deque) -> None:
        now = time.monotonic()
        waits = [p.state[1] + self.timeout_s - now for p in self._procs if p.state[0] != IDLE]
        ready = wait([p.conn for p in self._procs] + [p.proc.sentinel for p in self._procs],
                     timeout=min([0.1, *waits]) if waits else 0.1)
        for p in list(self._procs):
            if p.conn in ready or p.proc.sentinel in ready:
                self._read(p, results, queue)

    def _read(self, p: _Proc, results: dict, queue: deque) -> None:
        self._drain(p, results)
        if not p.proc.is_alive():
            p.proc.join()
            self._replace(p, results, queue, "raised",
                          f"reward process died (exit code {p.proc.exitcode})")

    def _drain(self, p: _Proc, results: dict) -> None:
        """Handle every message already sent; a dead process's last results still count."""
        try:
            while p.conn.poll():
                self._handle(p, p.conn.recv(), results)
        except (EOFError, OSError):
            pass  # the process is gone; the caller settles its samples

    def _handle(self, p: _Proc, msg: object, results: dict) -> None:
        if isinstance(msg, Ready):
            p.ready = True
            log.debug("reward process %d ready after %.2f CPU s", msg.pid, msg.cpu_s)
        elif isinstance(msg, Fatal):
            self.close()
            raise RewardFailureError(f"a reward process could not start "
                                     f"({', '.join(t.name for t in self.terms)}): {msg.message}")
        elif isinstance(msg, Results):
            results.update(msg.scored)
            done = {i for i, _ in msg.scored}
            p.chunk = [] if msg.done else [it for it in p.chunk if it.index not in done]
            if msg.done and msg.scored:
                self._observe_cost(msg.seconds / max(1, len(msg.scored)), msg.output)

    def _enforce_limits(self, results: dict, queue: deque) -> None:
        now = time.monotonic()
        for p in list(self._procs):
            if p.chunk and p.state[0] != IDLE and now - p.state[1] > self.timeout_s:
                p.proc.kill()
                p.proc.join()
                self._drain(p, results)
                self._replace(p, results, queue, "timeout",
                              f"no result within reward.timeout_s={self.timeout_s}")

    def _replace(self, p: _Proc, results: dict, queue: deque, kind: str, why: str) -> None:
        """`p` is dead: its current sample(s) fail with `kind`; the rest go back in the queue."""
        if not p.ready:
            self.close()
            raise RewardFailureError(f"a reward process died while starting: {why}")
        current, term = p.state[0], int(p.state[2])
        left = [it for it in p.chunk if it.index not in results]
        lost = left if current == BATCH else [it for it in left if it.index == current]
        for it in lost:
            results[it.index] = self._failed(term, kind, why)
        rest = [it for it in left if it not in lost]
        if rest:
            queue.appendleft(rest)
        p.conn.close()
        self._procs[self._procs.index(p)] = self._start()

    def _failed(self, term: int, kind: str, why: str) -> tuple[Outcome, ...]:
        """Outcomes for a sample lost with its process: `term` failed, the others unscored."""
        return tuple(Outcome(kind, message=f"{t.name}: {why}") if j == term else Outcome("ok")
                     for j, t in enumerate(self.terms))

    def _observe_cost(self, per_sample: float, output: str) -> None:
        self._cost = per_sample if self._cost is None else 0.5 * (self._cost + per_sample)
        if output and not self._output_logged:
            self._output_logged = True
            log.info("reward output (reward processes do not print to the console; first "
                     "500 characters of a chunk, shown once):\n%s", output)

    # ---- in-process -------------------------------------------------------------------

    def _setup_here(self) -> None:
        if not self._set_up:
            for term, fn in zip(self.terms, self._fns):
                run_setup(fn, term.kwargs)
            self._set_up = True

    def _run_inline(self, items: list[Item], results: dict) -> list[Item]:
        """Score in a thread of this process; returns the items left for the pool."""
        progress = [IDLE, 0.0, 0.0]
        got: dict[int, tuple[Outcome, ...]] = {}

        def mark(index: float, term: int) -> None:
            progress[1], progress[2], progress[0] = time.monotonic(), term, index

        def run() -> None:
            got.update(score_chunk(self.terms, self._fns, items, mark))
            progress[0] = IDLE

        self._setup_here()
        sink = BoundedText()
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink  # cheap rewards should not flood the console either
        start = time.perf_counter()
        thread = threading.Thread(target=run, daemon=True, name="rlft-reward-inline")
        try:
            thread.start()
            while thread.is_alive():
                thread.join(max(0.001, progress[1] + self.timeout_s - time.monotonic()))
                if thread.is_alive() and progress[0] != IDLE \
                        and time.monotonic() - progress[1] > self.timeout_s:
                    break
        finally:
            sys.stdout, sys.stderr = saved
        results.update(got)
        if thread.is_alive() or len(got) < len(items):
            return self._inline_lost(items, results, progress, thread.is_alive())
        self._observe_cost((time.perf_counter() - start) / max(1, len(items)), sink.take())
        return []

    def _inline_lost(self, items: list[Item], results: dict, progress: list, hung: bool) -> list:
        kind = "timeout" if hung else "raised"
        why = f"no result within reward.timeout_s={self.timeout_s}" if hung \
            else "reward call ended its thread (SystemExit or similar)"
        left = [it for it in items if it.index not in results]
        lost = left if progress[0] == BATCH else [it for it in left if it.index == progress[0]]
        for it in lost:
            results[it.index] = self._failed(int(progress[2]), kind, why)
        self._inline_ok = False
        log.warning("an in-process reward call failed (%s); from now on every batch is scored "
                    "in the reward processes", why)
        return [it for it in left if it not in lost]

    # ---- results ----------------------------------------------------------------------

    def _assemble(self, ro: Rollouts, results: dict, seconds: float) -> ScoredRollouts:
        B = len(ro)
        rewards = torch.full((B,), self.fallback)  # [B]
        comps: dict[str, torch.Tensor] = {}
        counts = {"raised": 0, "timeout": 0, "invalid": 0}
        per_term: dict[str, int] = {}
        first = ""
        for b in range(B):
            outs = results[b]
            bad = None
            for label, out in zip(self.labels, outs):
                if out.kind != "ok":
                    bad = bad or (label, out)
                    continue
                if out.total is not None:
                    _put(comps, label, b, B, out.total)
                for name, v in out.parts.items():
                    _put(comps, f"{label}/{name}", b, B, v)
            if bad is not None:
                label, out = bad
                counts[out.kind] += 1
                per_term[label] = per_term.get(label, 0) + 1
                first = first or f"sample {ro.row(b).uid}: {out.message}"
                self._log_first(label, out.kind, ro.row(b).uid, out.message)
                continue
            totals = [t.weight * o.total for t, o in zip(self.terms, outs) if o.total is not None]
            end = ro.episodes[b] if ro.episodes else None
            if end is not None and end.reward is not None:  # what the environment's step gave
                _put(comps, "env", b, B, end.reward)
                totals.append(end.reward)
            if totals:
                rewards[b] = math.fsum(totals)
        failures = RewardFailures(**counts)
        if B and failures.total / B > self.max_failure_frac:
            which = ", ".join(f"{k!r} on {v}" for k, v in per_term.items())
            raise RewardFailureError(
                f"{failures.total} of {B} samples failed their reward ({which}; raised="
                f"{failures.raised}, timeout={failures.timeout}, invalid={failures.invalid}). "
                f"First error, {first}. Fix the reward (try `rlft reward check`) or raise "
                f"reward.max_failure_frac (now {self.max_failure_frac}).")
        return ScoredRollouts(ro, rewards, comps, failures, seconds)

    def _log_first(self, label: str, kind: str, uid: str, message: str) -> None:
        if (label, kind) not in self._logged:
            self._logged.add((label, kind))
            log.warning("reward %r %s on sample %s: %s (further %s failures of %r are only "
                        "counted)", label, kind, uid, message, kind, label)


def _put(comps: dict, name: str, b: int, B: int, value: float) -> None:
    if name not in comps:
        comps[name] = torch.full((B,), float("nan"))  # [B]
    comps[name][b] = value
