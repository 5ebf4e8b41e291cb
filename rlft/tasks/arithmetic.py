"""`arithmetic`: "What is 12 + 7?" — the default task.

Small enough that SmolLM2-135M sometimes answers right (so GRPO has a signal)
and often wrong (so the reward has room to rise). Train and eval are disjoint:
a problem's split is fixed by a hash of its operands.
"""

from __future__ import annotations

import random

from rlft.tasks import TASKS, split_size

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _split_of(a: int, op: str, b: int) -> str:
    return "eval" if (a * 131 + b * 31 + ord(op)) % 10 == 0 else "train"


@TASKS.register("arithmetic")
def arithmetic(split: str) -> list[dict]:
    n = split_size("arithmetic", split)
    rng = random.Random(7)
    rows, seen = [], set()
    while len(rows) < n:
        op = rng.choice("++-*")
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else \
            (rng.randint(1, 50), rng.randint(1, 50))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen or _split_of(a, op, b) != split:
            continue
        seen.add((a, op, b))
        result = OPS[op](a, b)
        rows.append({
            "prompt": f"What is {a} {op} {b}? Give only the final number.",
            "answer": str(result),
            "demonstration": f"{a} {op} {b} = {result}",
        })
    return rows
