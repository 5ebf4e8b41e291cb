"""`reasoning_gym`: a reasoning-gym task's own scorer on the completion's answer.

For rows of `data.source=reasoning_gym:<task>` (rlft/data/reasoning_gym.py),
which carry the library's entry in `rg_entry`. The score is exactly the
library's documented use: `extract_answer(completion)` (the text inside the
last `<answer>...</answer>`, stripped; None when there is none, which the
scorers grade 0.0), then the task's `score_answer(answer, entry)`, a float in
[0, 1] (partial credit is the task's choice, e.g. 0.05 for a well-formed but
wrong ARC grid). The rows' prompt asks for that format: the library's default
system prompt. A `data.system_prompt` of your own should ask for the tags too.

The task is the entry's `metadata.source_dataset`; its dataset object, with
the default config the rows were built with, is made once per task and
process. A scorer that raises on a malformed answer (prime_factorization on a
non-number) costs that sample, as any raising reward does.
"""

from __future__ import annotations

from typing import Any

from rlft.data.reasoning_gym import decode_entry, library, scorer
from rlft.rewards.base import reward


def _warm_up(**kwargs: object) -> None:
    """Import reasoning-gym (its ~100 task modules: seconds) before calls are timed."""
    library()


@reward("reasoning_gym", setup=_warm_up, reads=("rg_entry",))
def reasoning_gym(completion: str, *, rg_entry: str | None = None, **fields: Any) -> float | None:
    """The task's `score_answer` on the completion's `<answer>` text; None without `rg_entry`.

    >>> from rlft.data.reasoning_gym import encode_entry
    >>> entry = encode_entry({"question": "Calculate 5 - 3 - 6.", "answer": "-4",
    ...     "metadata": {"source_dataset": "basic_arithmetic", "expression": "5 - 3 - 6"}})
    >>> reasoning_gym("5 - 3 = 2, 2 - 6 = -4. <answer>-4</answer>", rg_entry=entry)
    1.0
    >>> reasoning_gym("<answer>4</answer>", rg_entry=entry)
    0.0
    >>> reasoning_gym("-4", rg_entry=entry)  # no tags: no answer
    0.0
    >>> reasoning_gym("<answer>-4</answer>", answer="-4") is None
    True
    """
    if rg_entry is None:
        return None
    entry = decode_entry(rg_entry)
    task = entry.get("metadata", {}).get("source_dataset")
    if not isinstance(task, str):
        raise ValueError("reasoning_gym: rg_entry has no metadata.source_dataset naming its "
                         "task; build the rows with data.source=reasoning_gym:<task>")
    answer = library().utils.extract_answer(completion)
    return float(scorer(task).score_answer(answer, entry))
