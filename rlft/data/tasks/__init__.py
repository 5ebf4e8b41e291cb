"""Built-in tasks, generated deterministically in code (no download, no data files).

A task is a function `split -> list[dict]` registered in `TASKS`, so the data
source `builtin:<name>` finds it. Every row has a `prompt` (a string or chat
messages), the reference `answer`, a `demonstration` (a good full response,
for SFT/CHORD/Prefix-RFT) and the task's own fields (`schema`, `tools`).

Splits are disjoint by construction: each task enumerates a finite pool of
problems and `split_of` assigns each problem to `train` or `eval` by a stable
hash of its key, so no problem (under any phrasing) lands in both. The same
call always returns the same rows (seeded `random.Random`, no global state).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from rlft.registry import Registry

TaskFn = Callable[[str], list[dict]]
TASKS: Registry[TaskFn] = Registry("built-in task")

SPLIT_SIZES = {"train": 2000, "eval": 200}
EVAL_ONE_IN = 10  # a problem goes to eval when its key hashes to 0 mod this

T = TypeVar("T")


def split_size(task: str, split: str) -> int:
    if split not in SPLIT_SIZES:
        raise ValueError(f"built-in task {task!r} has splits {', '.join(SPLIT_SIZES)}, not "
                         f"{split!r}; set data.train_split / data.eval_split to one of them")
    return SPLIT_SIZES[split]


def split_of(key: str) -> str:
    """`train` or `eval` for a problem key; crc32 is stable across runs and
    platforms, unlike `hash()`, which PYTHONHASHSEED salts."""
    return "eval" if zlib.crc32(key.encode()) % EVAL_ONE_IN == 0 else "train"


def draw(pools: Sequence[Sequence[T]], n: int, rng: random.Random, task: str) -> list[T]:
    """`n` distinct items, taken round-robin from shuffled pools, then shuffled.

    Round-robin keeps the kinds (operators, record types, tools) balanced
    until the small pools run out; the big ones then fill the rest.
    """
    queues = [list(p) for p in pools]
    for q in queues:
        rng.shuffle(q)
    out: list[T] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    if len(out) < n:
        # A generator bug, not a user error: the pools are fixed in code.
        raise RuntimeError(f"built-in task {task!r} has only {len(out)} distinct problems for "
                           f"this split, needs {n}; enlarge its pools")
    rng.shuffle(out)
    return out


from rlft.data.tasks import (  # noqa: E402,F401  (registration)
    arithmetic,
    bank,
    json_extract,
    tool_call,
    tool_use,
)
