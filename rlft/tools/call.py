"""Running one tool call: the function the reward service's processes call for a tool.

`rlft.workers.tools.ToolRunner` hands calls to a `RewardService` whose one
term is `call_tool`: the service's processes give each call a time limit,
swallow what the tool prints, and survive a tool that raises, hangs or kills
its process. `call_tool` turns the tool's return value into bounded text.
Torch-free, so the processes start fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rlft.tools.base import resolve_tool

_loaded: dict[str, Any] = {}  # ref -> function, per process


def load_all(*, tools: Mapping[str, str], **_: Any) -> None:
    """Setup hook: import every tool once, before any call is timed."""
    for ref in tools.values():
        _loaded.setdefault(ref, resolve_tool(ref))


def as_text(value: Any, max_chars: int) -> str:
    """A tool's return value as text for the model, cut at `max_chars`.

    >>> as_text({"a": 1}, 100), as_text("x" * 30, 10)
    ('{"a": 1}', 'xxxxxxxxxx... [20 more characters cut]')
    """
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the tool returned a {type(value).__name__}, which is neither "
                            f"text nor JSON ({exc}); return a str, number, list or dict") from None
    if len(value) > max_chars:
        return f"{value[:max_chars]}... [{len(value) - max_chars} more characters cut]"
    return value


def call_tool(name: str, *, arguments: Any = None, tools: Mapping[str, str],
              max_chars: int = 2000, **_: Any) -> str:
    """Call tool `name` (a key of `tools`, name -> ref) with `arguments`; the result as text.

    >>> call_tool("calculator", arguments={"expression": "2 ** 10"},
    ...           tools={"calculator": "calculator"})
    '1024'
    """
    if name not in tools:
        raise ValueError(f"unknown tool {name!r}; the tools are {', '.join(sorted(tools))}")
    if not isinstance(arguments, Mapping):
        raise TypeError(f"the arguments of {name!r} must be a JSON object, "
                        f"got {type(arguments).__name__}")
    fn = _loaded.get(tools[name]) or _loaded.setdefault(tools[name], resolve_tool(tools[name]))
    return as_text(fn(**arguments), max_chars)


call_tool.rlft_setup = load_all  # read by rlft.rewards.base.run_setup
call_tool.rlft_text = True  # the reward runner returns its text instead of a score
