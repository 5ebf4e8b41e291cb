"""Built-in tasks, generated deterministically in code (no download, no data files).

Each task returns rows for a split ("train" or "eval"; disjoint by
construction) with a `prompt`, the reference `answer`, a `demonstration` (a
good full response, for SFT/CHORD/Prefix-RFT) and the task's own fields.
"""

from __future__ import annotations

from collections.abc import Callable

from rlft.registry import Registry

TaskFn = Callable[[str], list[dict]]
TASKS: Registry[TaskFn] = Registry("built-in task")

SPLIT_SIZES = {"train": 2000, "eval": 200}


def split_size(task: str, split: str) -> int:
    if split not in SPLIT_SIZES:
        raise ValueError(f"built-in task {task!r} has splits train and eval, not {split!r}")
    return SPLIT_SIZES[split]


from rlft.tasks import arithmetic, json_extract, tool_call  # noqa: E402,F401  (registration)
