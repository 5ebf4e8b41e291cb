"""RewardService: score a batch in worker processes, with a time limit per call.

Isolation is by process: a reward that hangs is killed with its process and
replaced, one that crashes its process costs only the sample it was on, and
worker stdout/stderr go to /dev/null so a reward printing megabytes cannot
flood the run's console. Failed samples get `fallback` and are counted by
kind; more than `max_failure_frac` failures in one batch aborts the step.
A sample with every term `None` (not applicable) gets `fallback` too, without
counting as a failure. `num_workers=0` scores in-process (no time limit).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import torch
from rlft.rewards.base import InvalidReward, RewardTerm, normalise, resolve

from rlft.types import RewardFailures, Rollouts, ScoredRollouts

log = logging.getLogger("rlft.reward")
Item = tuple[int, str, str, dict]  # (sample index, completion, prompt text, row fields)


class RewardFailureError(RuntimeError):
    pass


def score_items(terms: Sequence[RewardTerm], items: Sequence[Item], emit) -> None:
    """Score items, calling emit(index, kind, payload) per sample.

    kind "ok": payload = [(total|None, components) per term]; else "raised" or
    "invalid" with a message. Batched terms run once over all items.
    """
    fns = [resolve(t.name) for t in terms]
    batched = {}
    for j, (t, fn) in enumerate(zip(terms, fns)):
        if getattr(fn, "rlft_batched", False):
            batched[j] = fn([c for _, c, _, _ in items], prompts=[p for _, _, p, _ in items],
                            fields=[f for *_, f in items], **t.kwargs)
    for k, (idx, completion, prompt, fields) in enumerate(items):
        try:
            out = []
            for j, (t, fn) in enumerate(zip(terms, fns)):
                value = batched[j][k] if j in batched else \
                    fn(completion, prompt=prompt, **{**fields, **t.kwargs})
                out.append(normalise(value))
        except InvalidReward as exc:
            emit(idx, "invalid", f"{terms[j].name}: {exc}")
        except Exception as exc:  # noqa: BLE001  (user code: any error costs one sample)
            emit(idx, "raised", f"{terms[j].name}: {type(exc).__name__}: {exc}"[:500])
        else:
            emit(idx, "ok", out)


def _worker(conn, terms: Sequence[RewardTerm]) -> None:
    devnull = open(os.devnull, "w")
    sys.stdout = sys.stderr = devnull
    os.dup2(devnull.fileno(), 1)
    os.dup2(devnull.fileno(), 2)
    while True:
        items = conn.recv()
        if items is None:
            return
        score_items(terms, items, lambda i, kind, payload: conn.send((i, kind, payload)))
        conn.send(None)  # chunk done


@dataclass
class _Proc:
    proc: mp.Process
    conn: object
    pending: list[Item] = field(default_factory=list)
    last: float = 0.0


class RewardService:
    def __init__(self, terms: Sequence[RewardTerm], num_workers: int = 2, timeout_s: float = 30.0,
                 fallback: float = 0.0, max_failure_frac: float = 0.5) -> None:
        self.terms = list(terms)
        for t in self.terms:
            resolve(t.name)  # a bad name or path fails here, not in a worker
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self.fallback, self.max_failure_frac = fallback, max_failure_frac
        self._ctx = mp.get_context("spawn")  # safe with torch and inside Ray actors
        self._procs = [self._start() for _ in range(num_workers)]
        self._first: dict[str, str] = {}  # error kind -> first message, for logs and aborts

    def _start(self) -> _Proc:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, self.terms), daemon=True)
        proc.start()
        child.close()
        return _Proc(proc, parent)

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        start = time.perf_counter()
        items = [(b, rollouts.response_text[b], rollouts.row(b).text,
                  dict(rollouts.row(b).fields)) for b in range(len(rollouts))]
        results: dict[int, tuple[str, object]] = {}
        if self.num_workers == 0:
            score_items(self.terms, items, lambda i, k, p: results.__setitem__(i, (k, p)))
        else:
            self._run_pool(items, results)
        return self._assemble(rollouts, results, time.perf_counter() - start)

    def _run_pool(self, items: list[Item], results: dict) -> None:
        size = max(1, -(-len(items) // (2 * len(self._procs))))
        queue = [items[i:i + size] for i in range(0, len(items), size)]
        busy: dict[object, _Proc] = {}
        while queue or busy:
            for p in self._procs:
                if queue and not p.pending:
                    p.pending, p.last = queue.pop(0), time.monotonic()
                    p.conn.send(p.pending)
                    busy[p.conn] = p
            for conn in wait(list(busy), timeout=0.05):
                p = busy[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the process died under a sample
                    self._replace(p, busy, results, "raised", "reward process died")
                    continue
                if msg is None:
                    p.pending = []
                    del busy[conn]
                    continue
                results[msg[0]] = (msg[1], msg[2])
                p.last = time.monotonic()
            now = time.monotonic()
            for p in [p for p in busy.values() if now - p.last > self.timeout_s]:
                self._replace(p, busy, results, "timeout",
                              f"no result within reward.timeout_s={self.timeout_s}")

    def _replace(self, p: _Proc, busy: dict, results: dict, kind: str, why: str) -> None:
        """Kill `p`; its current sample fails with `kind`, the rest are re-queued."""
        del busy[p.conn]
        p.proc.kill()
        p.proc.join()
        left = [it for it in p.pending if it[0] not in results]
        if left:
            results[left[0][0]] = (kind, why)
        fresh = self._start()
        self._procs[self._procs.index(p)] = fresh
        if left[1:]:
            fresh.pending, fresh.last = left[1:], time.monotonic()
            fresh.conn.send(left[1:])
            busy[fresh.conn] = fresh

    def _assemble(self, ro: Rollouts, results: dict, seconds: float) -> ScoredRollouts:
        B = len(ro)
        rewards = torch.full((B,), self.fallback)
        comps: dict[str, torch.Tensor] = {}
        counts = {"raised": 0, "timeout": 0, "invalid": 0}
        for b in range(B):
            kind, payload = results[b]
            if kind != "ok":
                counts[kind] += 1
                self._log_first(kind, ro.row(b).uid, str(payload))
                continue
            totals = []
            for term, (total, parts) in zip(self.terms, payload):
                if total is not None:
                    totals.append(term.weight * total)
                    _put(comps, term.label, b, B, total)
                for name, v in parts.items():
                    _put(comps, f"{term.label}/{name}", b, B, v)
            if totals:
                rewards[b] = sum(totals)
        failures = RewardFailures(**counts)
        if B and failures.total / B > self.max_failure_frac:
            raise RewardFailureError(
                f"{failures.total} of {B} samples failed their reward ({counts}); first error: "
                f"{next(iter(self._first.values()), '')}. Fix the reward (try `rlft reward check`) "
                f"or raise reward.max_failure_frac (now {self.max_failure_frac})")
        return ScoredRollouts(ro, rewards, comps, failures, seconds)

    def _log_first(self, kind: str, uid: str, msg: str) -> None:
        if kind not in self._first:
            self._first[kind] = f"{uid}: {msg}"
            log.warning("reward %s on sample %s: %s (further %s errors are only counted)",
                        kind, uid, msg, kind)

    def close(self) -> None:
        for p in self._procs:
            if p.proc.is_alive():
                p.conn.send(None)
                p.proc.join(timeout=2)
                if p.proc.is_alive():
                    p.proc.kill()
        self._procs = []


def _put(comps: dict, name: str, b: int, B: int, value: float) -> None:
    if name not in comps:
        comps[name] = torch.full((B,), float("nan"))
    comps[name][b] = value
