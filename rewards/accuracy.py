"""`accuracy`: is the completion's answer the reference `answer`?

Modes: `math` (math-verify: boxed, LaTeX, plain numbers, fractions; it prefers
an explicit "answer"/boxed expression and otherwise takes the last one),
`exact`, `normalized` (case, spaces and punctuation ignored), `choice`
(multiple-choice letter A-J).

math-verify's own time limits use SIGALRM, which only works in a main thread;
they are switched off here (`parsing_timeout=None`, `timeout_seconds=None`)
because the reward service enforces the limit by killing the reward process,
which works from any thread and in Ray actors.
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any

from rlft.rewards.base import reward

# math-verify warns on every call that its timeout is off; we know, see above.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _warm_up(**kwargs: object) -> None:
    """Import math-verify (sympy, the LaTeX grammar: seconds) before calls are timed."""
    from math_verify import parse, verify

    verify(parse("$1$", parsing_timeout=None), parse("1", parsing_timeout=None),
           timeout_seconds=None)


def _normalise(text: str) -> str:
    text = text.casefold().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def _math(completion: str, answer: str) -> float:
    from math_verify import parse, verify

    # A bare reference ("19", "\frac{1}{2}") is read as LaTeX math, not prose.
    wrapped = answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
    gold = parse(wrapped, parsing_timeout=None)
    if not gold:
        raise ValueError(f"accuracy: math-verify cannot read the row's answer {answer[:80]!r}; "
                         "fix the data, or use kwargs {mode: normalized} for text answers")
    pred = parse(completion, parsing_timeout=None)
    if not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=None))


# "answer is (B)", "Answer: b", then a lone letter like "(C)" or "D." / "D)"; the
# last match wins. A bare capital "I" only counts in the explicit forms.
_EXPLICIT = re.compile(r"answer\s*(?:is|:)?\s*[(\[]?\s*([A-Ja-j])\b", re.IGNORECASE)
_LONE = re.compile(r"(?<![A-Za-z])[(\[]?([A-HJ])[)\].:]?(?![A-Za-z])")


def _choice(completion: str, answer: str) -> float:
    ref = next((ch for ch in answer.upper() if "A" <= ch <= "J"), None)  # "B", "(b)", "B."
    if ref is None:
        raise ValueError(f"accuracy: mode choice needs a letter A-J as the row's answer, got "
                         f"{answer[:40]!r}")
    found = _EXPLICIT.findall(completion) or _LONE.findall(completion)
    return float(bool(found) and found[-1].upper() == ref)


MODES = {
    "math": _math,
    "exact": lambda c, a: float(c.strip() == a.strip()),
    "normalized": lambda c, a: float(_normalise(c) == _normalise(a)),
    "choice": _choice,
}


@reward("accuracy", setup=_warm_up, reads=("answer",))
def accuracy(completion: str, *, answer: Any = None, mode: str = "math",
             **fields: Any) -> float | None:
    """1.0 when the completion's answer matches the row's `answer`, else 0.0.

    >>> accuracy("The answer is 19.", answer="19")
    1.0
    >>> accuracy("12 + 7 = 19", answer=19)
    1.0
    >>> accuracy("The answer is $\\\\frac{1}{2}$.", answer="0.5")
    1.0
    >>> accuracy("I think it is 9", answer="19")
    0.0
    >>> accuracy("Paris!", answer="paris", mode="normalized")
    1.0
    >>> accuracy("I'd say the answer is (B).", answer="B", mode="choice")
    1.0
    >>> accuracy("anything", answer=None) is None
    True
    """
    if answer is None:
        return None
    if mode not in MODES:
        raise ValueError(f"accuracy: unknown mode {mode!r}; choices: {', '.join(MODES)}")
    return MODES[mode](completion, str(answer))
