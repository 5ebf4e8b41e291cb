"""`format`: does the completion follow a required shape?"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from rlft.rewards.base import reward

THINK_THEN_ANSWER = r"\s*<think>.+?</think>\s*\S.*"


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, flags=re.DOTALL)
    except re.error as exc:
        raise ValueError(f"format: kwargs pattern {pattern!r} is not a valid regex: {exc}") from exc


@reward("format")
def format_reward(completion: str, *, pattern: str = THINK_THEN_ANSWER, search: bool = False,
                  **fields: Any) -> float:
    """1.0 when the completion matches `pattern` (regex, DOTALL), else 0.0.

    The whole completion must match, unless `search=True` (anywhere in it).
    The default asks for `<think>…</think>` followed by an answer.

    >>> format_reward("<think>7 + 12</think> 19")
    1.0
    >>> format_reward("19")
    0.0
    >>> format_reward("<think>unclosed 19")
    0.0
    >>> format_reward("Answer: 19", pattern=r"Answer: \\d+")
    1.0
    >>> format_reward("Sure. Answer: 19, hope that helps", pattern=r"Answer: \\d+", search=True)
    1.0
    """
    rx = _compiled(pattern)
    found = rx.search(completion) if search else rx.fullmatch(completion)
    return float(found is not None)
