"""Calling reward functions on samples: the code that runs inside each reward process.

`score_chunk` scores in-process (`RewardService(num_workers=0)`, the inline
path for cheap rewards) and in the service's processes (`worker_main`). It is
torch-free so a reward process starts fast.

A reward process tells its parent where it is through three shared doubles
(`[sample index | IDLE | BATCH, call start (monotonic), term index]`) instead
of messages: the parent enforces the per-call time limit from them and, when it
kills a hung process, knows which sample and term hung, with no per-sample
message traffic.
"""

from __future__ import annotations

import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlft.rewards.base import (
    InvalidReward,
    RewardTerm,
    is_batched,
    load_term,
    normalise,
    run_setup,
)

IDLE = -2.0  # state[0] between calls
BATCH = -1.0  # state[0] while a batched term runs over the whole chunk
OUTPUT_CHARS = 500  # reward output kept per chunk, for one log line


@dataclass(frozen=True)
class Item:
    """What one reward call sees: a completion and its dataset row."""

    index: int  # position in the batch
    completion: str
    prompt: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One term on one sample. kind: ok | raised | timeout | invalid."""

    kind: str = "ok"
    total: float | None = None  # None: not applicable (or never ran, see RewardService._failed)
    parts: Mapping[str, float] = field(default_factory=dict)
    message: str = ""
    text: str | None = None  # a text term's result (a tool call, `rlft.tools.call`)


@dataclass(frozen=True)
class Ready:
    pid: int
    cpu_s: float  # CPU time spent importing and in setup hooks


@dataclass(frozen=True)
class Fatal:
    message: str  # a term could not be loaded or its setup raised


@dataclass(frozen=True)
class Results:
    scored: list[tuple[int, tuple[Outcome, ...]]]
    done: bool  # the whole chunk is scored
    seconds: float  # wall time in reward calls
    output: str = ""  # what the rewards printed, bounded


class BoundedText(io.TextIOBase):
    """A stdout stand-in that keeps the first OUTPUT_CHARS characters and drops the rest."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self._size < OUTPUT_CHARS:
            self._parts.append(s[: OUTPUT_CHARS - self._size])
            self._size += len(self._parts[-1])
        return len(s)

    def take(self) -> str:
        out, self._parts, self._size = "".join(self._parts), [], 0
        return out


def describe(exc: BaseException) -> str:
    """`Type: message (at file:line in fn)`, truncated: enough to find the bug."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        f = frames[-1]
        where = f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"
    return f"{type(exc).__name__}: {str(exc)[:400]}{where}"


def _checked(value: Any) -> Outcome:
    try:
        total, parts = normalise(value)
    except InvalidReward as exc:
        return Outcome("invalid", message=str(exc)[:500])
    return Outcome("ok", total, parts)


def _run_batched(term: RewardTerm, fn: Callable, items: Sequence[Item]) -> list[Outcome]:
    """One call over the chunk; a raise or a wrong-length answer fails every sample."""
    try:
        out = fn([it.completion for it in items], prompts=[it.prompt for it in items],
                 fields=[it.fields for it in items], **term.kwargs)
    except Exception as exc:  # noqa: BLE001  (user code: a failure costs its samples, not the run)
        return [Outcome("raised", message=f"{term.name}: {describe(exc)}")] * len(items)
    if not isinstance(out, Sequence) or isinstance(out, (str, bytes)) or len(out) != len(items):
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") \
            else type(out).__name__
        why = f"{term.name}: a batched reward must return a list of {len(items)} values, got {got}"
        return [Outcome("invalid", message=why)] * len(items)
    return [_checked(v) for v in out]


def _run_one(term: RewardTerm, fn: Callable, it: Item) -> Outcome:
    try:
        # Config kwargs win over same-named row fields: they are the user's explicit choice.
        value = fn(it.completion, prompt=it.prompt, **{**it.fields, **term.kwargs})
    except Exception as exc:  # noqa: BLE001  (user code: a failure costs one sample)
        return Outcome("raised", message=f"{term.name}: {describe(exc)}")
    if getattr(fn, "rlft_text", False):  # a tool call: the same isolation, a text result
        return Outcome("ok", text=value) if isinstance(value, str) else \
            Outcome("invalid", message=f"{term.name}: returned {type(value).__name__}, not str")
    out = _checked(value)
    return out if out.kind == "ok" else Outcome(out.kind, message=f"{term.name}: {out.message}")


def score_chunk(terms: Sequence[RewardTerm], fns: Sequence[Callable], items: Sequence[Item],
                mark: Callable[[float, int], None]) -> list[tuple[int, tuple[Outcome, ...]]]:
    """Every term on every item, in order; `mark(sample, term)` is called before each call."""
    batched: dict[int, list[Outcome]] = {}
    for j, (term, fn) in enumerate(zip(terms, fns)):
        if is_batched(fn) and items:
            mark(BATCH, j)
            batched[j] = _run_batched(term, fn, items)
    out = []
    for k, it in enumerate(items):
        row = []
        for j, (term, fn) in enumerate(zip(terms, fns)):
            if j in batched:
                row.append(batched[j][k])
            else:
                mark(it.index, j)
                row.append(_run_one(term, fn, it))
        out.append((it.index, tuple(row)))
    return out


def worker_main(conn: Any, terms: Sequence[RewardTerm], state: Any) -> None:
    """Reward process: load the terms and run their setup, then score chunks until None.

    Sends Ready or Fatal once, then one Results per chunk received.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # C-level output too: a reward must not flood the run's console
    os.dup2(devnull, 2)
    sink = BoundedText()
    sys.stdout = sys.stderr = sink
    try:
        fns = [load_term(t) for t in terms]
        for term, fn in zip(terms, fns):
            run_setup(fn, term.kwargs)
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises it)
        conn.send(Fatal(describe(exc)))
        return
    conn.send(Ready(os.getpid(), time.process_time()))

    def mark(index: float, term: int) -> None:
        state[1], state[2] = time.monotonic(), term
        state[0] = index  # written last: the parent keys on it

    while True:
        chunk = conn.recv()
        if chunk is None:
            return
        start = time.perf_counter()
        scored = score_chunk(terms, fns, chunk, mark)
        state[0] = IDLE
        conn.send(Results(scored, True, time.perf_counter() - start, sink.take()))
