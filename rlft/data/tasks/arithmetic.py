"""`arithmetic`: "What is 12 + 7?" — the default task.

Addition and subtraction within 20, plus single-digit products: SmolLM2-135M
gets about one in five right when sampling (measured: 0.22 at temperature 1),
so GRPO has a signal and the reward has room to rise. The short system
message replaces SmolLM2's long default one, which keeps prompts at ~30
tokens. There are only ~670 such problems, so each is asked in a few
phrasings to reach 2,000 training rows; a problem's split is fixed by a hash
of the problem alone, so eval problems are unseen in any phrasing.
"""

from __future__ import annotations

import random

from rlft.data.tasks import TASKS, draw, split_of, split_size

SYSTEM = "Answer with just the number."
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
WORDS = {"+": "plus", "-": "minus", "*": "times"}
PHRASINGS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "What is {a} {word} {b}?",
             "{a} {op} {b} = ?")


def problems(op: str) -> list[tuple[int, str, int]]:
    """Every problem for one operator: results stay non-negative and small."""
    if op == "*":
        return [(a, op, b) for a in range(2, 10) for b in range(2, 10)]
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    return [(a, op, b) for a, b in pairs if op == "+" or a >= b]


def _row(a: int, op: str, b: int, phrasing: str) -> dict:
    result = OPS[op](a, b)
    question = phrasing.format(a=a, op=op, b=b, word=WORDS[op])
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "answer": str(result),
        "demonstration": f"{a} {op} {b} = {result}",
    }


@TASKS.register("arithmetic")
def arithmetic(split: str) -> list[dict]:
    n = split_size("arithmetic", split)
    # One pool per operator, so round-robin drawing keeps the operators balanced.
    pools = [[(a, o, b, p) for a, o, b in problems(op) if split_of(f"{a} {o} {b}") == split
              for p in PHRASINGS] for op in OPS]
    return [_row(*item) for item in draw(pools, n, random.Random(7), "arithmetic")]
