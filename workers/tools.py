"""ToolRunner: tool calls run by the reward service's isolated processes.

One `RewardService` whose single term is `rlft.tools.call:call_tool` runs the
calls, so tools get the reward service's isolation (their own processes, fds
1/2 to /dev/null, a per-call time limit, a dead or hung process replaced)
with no second pool. A call that raises, hangs, returns junk or is not a call
at all becomes an error message the model reads (`ToolResult.ok` False,
counted in `rollout/tool_errors`); the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlft.rewards.base import RewardTerm
from rlft.rewards.runner import Item
from rlft.tools.base import ToolSpec, load_tools
from rlft.workers.reward import RewardService

DISPATCH = "rlft.tools.call:call_tool"


@dataclass(frozen=True)
class ToolRequest:
    """One call the model made. `error`: why it is not a call (then nothing runs)."""

    name: str
    arguments: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class ToolResult:
    name: str
    content: str  # what the model reads in the tool message
    ok: bool
    kind: str = "ok"  # ok | raised | timeout | invalid | unparsed


@dataclass(frozen=True)
class ToolSettings:
    """`rollout.tools` and its limits, as the rollout worker takes them."""

    refs: tuple[str, ...]  # built-in names or import paths
    max_turns: int = 4
    max_total_tokens: int = 256
    timeout_s: float = 10.0
    max_chars: int = 1000
    num_workers: int = 1  # tool processes per rollout worker


@dataclass
class ToolRunner:
    """Runs batches of tool calls; `num_workers=0` runs them in this process (debugging)."""

    refs: Sequence[str]
    timeout_s: float = 10.0
    max_chars: int = 2000
    num_workers: int = 2
    specs: list[ToolSpec] = field(init=False)
    seconds: float = field(init=False, default=0.0)  # wall time in tools, all batches

    def __post_init__(self) -> None:
        self.specs = load_tools(list(self.refs))  # a bad name or schema fails here, not in a turn
        kwargs = {"tools": {s.name: s.ref for s in self.specs}, "max_chars": self.max_chars}
        # inline_max_s=0: never in the caller's process, which holds the engine.
        self._service = RewardService([RewardTerm(DISPATCH, kwargs=kwargs)],
                                      num_workers=self.num_workers, timeout_s=self.timeout_s,
                                      inline_max_s=0.0)

    @property
    def schemas(self) -> list[dict]:
        """The tools as the chat template's `tools=` argument takes them."""
        return [{"type": "function", "function": dict(s.schema)} for s in self.specs]

    def run(self, requests: Sequence[ToolRequest]) -> list[ToolResult]:
        start = time.perf_counter()
        items = [Item(i, r.name, "", {"arguments": r.arguments})
                 for i, r in enumerate(requests) if not r.error]
        got = self._service.outcomes(items) if items else {}
        self.seconds += time.perf_counter() - start
        return [self._result(r, got.get(i)) for i, r in enumerate(requests)]

    def _result(self, req: ToolRequest, outs: Any) -> ToolResult:
        if req.error:
            return ToolResult(req.name, f"Error: {req.error}", False, "unparsed")
        out = outs[0]
        if out.kind == "ok" and out.text is not None:
            return ToolResult(req.name, out.text, True)
        why = out.message.removeprefix(f"{DISPATCH}: ")
        if out.kind == "timeout":
            why = f"{req.name} did not finish within {self.timeout_s:g} s"
        return ToolResult(req.name, f"Error: {why}", False, out.kind)

    def close(self) -> None:
        self._service.close()

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
