"""Environment instances in processes of their own, away from the rollout engine.

`EnvHost` keeps `num_workers` processes; episode `e` lives in process
`e % num_workers` for its whole life (its state is that process's memory).
Each request (open, step, close) has `timeout_s`; each process a memory cap
of `memory_mb` over what it holds at start (RLIMIT_AS) and its own
stdout/stderr sent to /dev/null. A request that raises (MemoryError
included) ends its episode with an error observation. A process that hangs
past the limit or dies is killed and replaced: the episode it was serving
gets the error, and so does every other episode it held (their state died
with it). Each such episode is counted in `errors`; the run goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from rlft.envs.base import (
    Observation,
    env_class,
    message,
    start,
    state_of,
)

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EnvSettings:
    """`rollout.env` and its limits, as the rollout worker takes them."""

    ref: str  # built-in name or import path of the class
    timeout_s: float = 10.0  # per reset / step / state call
    memory_mb: int = 1024  # per environment process, over its size at start
    max_chars: int = 1000  # per observation message
    num_workers: int = 2  # environment processes per rollout worker
    max_turns: int = 4  # model turns per episode
    max_total_tokens: int = 256  # after the prompt: every turn and observation
    loop: str = "episode"  # episode: each on its own clock; lockstep: every turn together


@dataclass(frozen=True)
class Opened:
    """An episode's start: messages that replace the prompt (protocol `reset`), if
    any, and the tools shown to the model."""

    messages: tuple[Mapping[str, Any], ...] = ()
    tools: tuple[Mapping[str, Any], ...] = ()
    error: str = ""


def _limit_memory(memory_mb: int) -> None:
    with open("/proc/self/status") as f:
        size_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    cap = size_kb * 1024 + memory_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _handle(cls: type, episodes: dict, op: str, eid: int, payload: Any, max_chars: int) -> Any:
    if op == "open":
        episodes[eid], msgs, tools = start(cls, payload, max_chars)
        return Opened(tuple(_first(m, cls.__name__, max_chars) for m in msgs), tuple(tools))
    if op == "step":
        return episodes[eid].step(payload)
    return state_of(episodes.pop(eid).instance)


def _first(m: Any, where: str, max_chars: int) -> dict:
    """A `reset` message: any role a conversation may start with."""
    if isinstance(m, Mapping) and m.get("role") in ("system", "assistant"):
        return {"role": m["role"], "content": str(m.get("content", ""))}
    return message(m, f"{where}.reset", max_chars)


def env_main(conn: Any, ref: str, max_chars: int, memory_mb: int) -> None:
    """An environment process: serve lists of (op, episode, payload) until None,
    answering each request as it finishes with (episode, ok, value)."""
    from rlft.rewards.runner import describe  # torch-free

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        cls = env_class(ref)
        _limit_memory(memory_mb)
    except Exception as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        conn.send(("fatal", describe(exc)))
        return
    conn.send(("ready", os.getpid()))
    episodes: dict[int, Any] = {}
    while (batch := conn.recv()) is not None:
        for op, eid, payload in batch:
            try:
                conn.send((eid, True, _handle(cls, episodes, op, eid, payload, max_chars)))
            except BaseException as exc:  # noqa: BLE001  (user code, MemoryError included)
                episodes.pop(eid, None)
                conn.send((eid, False, describe(exc)))


@dataclass
class _Proc:
    proc: Any
    conn: Any
    episodes: set[int] = field(default_factory=set)
    waiting: list[int] = field(default_factory=list)  # requests sent, oldest first
    since: float = 0.0  # when the oldest outstanding request started


class EnvHost:
    """Episodes of one environment class across isolated processes (module docstring)."""

    def __init__(self, settings: EnvSettings) -> None:
        self.s = settings
        env_class(settings.ref)  # a bad name fails here, in the caller, with its message
        self._ctx = mp.get_context("forkserver")
        self._procs = [self._start() for _ in range(max(1, settings.num_workers))]
        self._dead: dict[int, str] = {}  # episode -> why its state is gone
        self.errors = 0  # episodes ended by an environment failure
        self.seconds = 0.0  # wall time in environment calls

    def open(self, rows: Sequence[Mapping[str, Any]], first: int = 0) -> list[Opened]:
        """Start episodes `first`, `first + 1`, ... from `rows`."""
        got = self._run([("open", first + i, dict(r)) for i, r in enumerate(rows)])
        for e, (ok, why) in got.items():
            if not ok:  # its first step reports it (and counts it) as the episode's end
                self._dead.setdefault(e, why)
        return [v if ok else Opened(error=v) for ok, v in (got[first + i] for i in range(len(rows)))]

    def step(self, moves: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[int, Observation]:
        """Each (episode, assistant message) -> its observation; a failure ends the
        episode with an error message."""
        got = self._run([("step", e, dict(m)) for e, m in moves])
        return {e: v if ok else self._failed(e, v) for e, (ok, v) in got.items()}

    def close(self, eids: Sequence[int]) -> dict[int, Any]:
        """End episodes; each one's end state (None where it was lost)."""
        got = self._run([("close", e, None) for e in eids])
        for e in eids:
            self._dead.pop(e, None)
        return {e: v if ok else None for e, (ok, v) in got.items()}

    def _failed(self, eid: int, why: str) -> Observation:
        self.errors += 1
        self._dead.setdefault(eid, why)
        return Observation(({"role": "user", "content": f"Environment error: {why}"},), done=True,
                           error=why)

    def _start(self) -> _Proc:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=env_main, args=(child, self.s.ref, self.s.max_chars,
                                                        self.s.memory_mb),
                                 daemon=True, name="rlft-env")
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise RuntimeError(f"environment process for {self.s.ref!r} did not start within "
                               f"{START_TIMEOUT_S:.0f} s")
        try:
            kind, value = parent.recv()
        except EOFError:
            kind, value = "fatal", f"the process exited at start (exit code {proc.exitcode})"
        if kind == "fatal":
            proc.join()
            raise RuntimeError(f"rollout.env={self.s.ref!r} could not be loaded in its process: "
                               f"{value}")
        return _Proc(proc, parent)

    def send_steps(self, moves: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[int, Observation]:
        """`step` without waiting: the answers come from `poll_steps`, except for episodes
        already lost, whose end is returned at once."""
        got = self._submit([("step", e, dict(m)) for e, m in moves])
        return {e: self._failed(e, v) for e, (_, v) in got.items()}

    def poll_steps(self, timeout: float | None) -> dict[int, Observation]:
        """Observations of sent steps that are ready within `timeout` (None: wait for
        at least one; 0: only what has arrived)."""
        start, out = time.perf_counter(), {}
        if any(p.waiting for p in self._procs):
            self._collect(out, timeout)
        self.seconds += time.perf_counter() - start
        return {e: v if ok else self._failed(e, v) for e, (ok, v) in out.items()}

    def pending(self) -> int:
        return sum(len(p.waiting) for p in self._procs)

    def _run(self, requests: list[tuple[str, int, Any]]) -> dict[int, tuple[bool, Any]]:
        start = time.perf_counter()
        out = self._submit(requests)
        while any(p.waiting for p in self._procs):
            self._collect(out, None)
        self.seconds += time.perf_counter() - start
        return out

    def _submit(self, requests: list[tuple[str, int, Any]]) -> dict[int, tuple[bool, Any]]:
        """Send each request to its episode's process; lost episodes answer at once."""
        out: dict[int, tuple[bool, Any]] = {}
        batches: dict[int, list] = {}
        for op, eid, payload in requests:
            if eid in self._dead:
                out[eid] = (False, self._dead[eid])
                continue
            k = eid % len(self._procs)
            batches.setdefault(k, []).append((op, eid, payload))
            if op == "open":
                self._procs[k].episodes.add(eid)
            elif op == "close":
                self._procs[k].episodes.discard(eid)
        now = time.monotonic()
        for k, batch in batches.items():
            p = self._procs[k]
            if not p.waiting:  # the time limit runs from when the process starts on it
                p.since = now
            p.conn.send(batch)
            p.waiting += [eid for _, eid, _ in batch]
        return out

    def _collect(self, out: dict, limit: float | None) -> None:
        """Take what answers arrive within `limit` (None: until one does or a time limit
        passes); replace a process past its time limit or dead."""
        busy = [p for p in self._procs if p.waiting]
        now = time.monotonic()
        left = min(p.since + self.s.timeout_s - now for p in busy)
        left = left if limit is None else min(left, limit)
        ready = wait([p.conn for p in busy] + [p.proc.sentinel for p in busy], max(0.0, left))
        for p in busy:
            if p.conn in ready:
                try:
                    while p.waiting and p.conn.poll():
                        eid, ok, value = p.conn.recv()
                        out[eid] = (ok, value)
                        p.waiting.remove(eid)
                        p.since = time.monotonic()
                    continue
                except (EOFError, OSError):
                    pass
            if p.proc.sentinel in ready or p.conn in ready:
                self._replace(p, out, f"its process died (exit code {p.proc.exitcode})")
            elif time.monotonic() - p.since > self.s.timeout_s:
                self._replace(p, out, f"no answer within {self.s.timeout_s:g} s")

    def _replace(self, p: _Proc, out: dict, why: str) -> None:
        """Kill `p`; its current request fails with `why`, every other episode it held is lost."""
        p.proc.kill()
        p.proc.join()
        p.conn.close()
        first, *rest = p.waiting
        out[first] = (False, why)
        for eid in rest:
            out[eid] = (False, "its environment process was replaced after another episode "
                               "in it failed")
        for eid in p.episodes - {first, *rest}:
            self._dead.setdefault(eid, "its environment process was replaced after another "
                                       "episode failed")
        fresh = self._start()
        p.proc, p.conn, p.episodes, p.waiting = fresh.proc, fresh.conn, set(), []

    def shutdown(self) -> None:
        for p in self._procs:
            try:
                p.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            p.proc.join(timeout=2)
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join()
