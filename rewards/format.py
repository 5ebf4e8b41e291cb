"""`format`: does the completion follow a required shape?"""

from __future__ import annotations

import re

from rlft.rewards.base import reward

THINK_THEN_ANSWER = r"^\s*<think>.+?</think>\s*\S.*$"


@reward("format")
def format_reward(completion: str, *, pattern: str = THINK_THEN_ANSWER, **fields) -> float:
    """1.0 when the whole completion matches `pattern` (regex, DOTALL), else 0.0.

    The default asks for `<think>…</think>` followed by an answer.

    >>> format_reward("<think>7 + 12</think> 19")
    1.0
    >>> format_reward("19")
    0.0
    >>> format_reward("Answer: 19", pattern=r"Answer: \\d+")
    1.0
    """
    return float(re.fullmatch(pattern, completion, flags=re.DOTALL) is not None)
