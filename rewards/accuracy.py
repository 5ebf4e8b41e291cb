"""`accuracy`: is the completion's answer the reference `answer`?

Modes: `math` (math-verify: boxed, LaTeX, plain numbers, fractions; the last
answer-like expression in the completion counts), `exact`, `normalized`
(case, spaces and punctuation ignored), `choice` (multiple-choice letter).
"""

from __future__ import annotations

import logging
import re
import string

from rlft.rewards.base import reward

# Our reward service enforces time limits by killing worker processes, so
# math-verify's own signal-based timeouts (main thread only) are switched off
# and its warning about that is silenced.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def _math(completion: str, answer: str) -> float:
    from math_verify import parse, verify

    gold = parse(answer if "$" in answer or "\\" in answer else f"${answer}$",
                 parsing_timeout=None)
    pred = parse(completion, parsing_timeout=None)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=None))


def _choice(completion: str, answer: str) -> float:
    found = re.findall(r"\b([A-J])\b", completion.upper())
    return float(bool(found) and found[-1] == answer.strip().upper()[:1])


MODES = {
    "math": _math,
    "exact": lambda c, a: float(c.strip() == a.strip()),
    "normalized": lambda c, a: float(_normalise(c) == _normalise(a)),
    "choice": _choice,
}


@reward("accuracy")
def accuracy(completion: str, *, answer: object = None, mode: str = "math", **fields) -> float | None:
    """1.0 when the completion's answer matches the row's `answer`, else 0.0.

    >>> accuracy("12 + 7 = 19", answer="19")
    1.0
    >>> accuracy("The answer is $\\\\frac{1}{2}$.", answer="0.5")
    1.0
    >>> accuracy("I think it is 9", answer="19")
    0.0
    >>> accuracy("Paris!", answer="paris", mode="normalized")
    1.0
    >>> accuracy("anything", answer=None) is None
    True
    """
    if answer is None:
        return None
    if mode not in MODES:
        raise ValueError(f"accuracy: unknown mode {mode!r}; choices: {', '.join(MODES)}")
    return MODES[mode](completion, str(answer))
