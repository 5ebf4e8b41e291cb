"""`tool_use`: questions only a tool answers, for multi-turn rollouts (`rollout.tools`).

Two kinds, drawn in turn: products and sums of large numbers (too long to
work out in one's head: the `calculator` tool), and figures of invented towns
that only the `lookup` tool's table holds (`rlft.tools.builtin.FACTS`). Every
row offers both tools in `tools` (their schemas, so the prompt shows them);
`answer` is the exact result. Run it with `rollout.tools=[calculator, lookup]`.

`demonstration` is the full exchange in the ChatML form SmolLM2 and Qwen
models use (the call, `<|im_end|>`, the tool message, the final answer), so
SFT, CHORD or Prefix-RFT can teach the call format; `demonstration_turns`
holds the same exchange as messages (JSON text). A problem's split is fixed by a hash of
the problem alone.
"""

from __future__ import annotations

import copy
import json
import random

from rlft.data.tasks import TASKS, draw, split_of, split_size
from rlft.tools.base import load_tools
from rlft.tools.builtin import FACTS, calculator, lookup

# The tool list and the call format follow in the system message (rlft/data/prompts.py)
# or in the template's own tool section.
SYSTEM = "Use a tool to find the answer. Once you have its result, reply with just the answer."
ASK = {"population": ("What is the population of {town}?", "How many people live in {town}?"),
       "founded": ("In what year was {town} founded?", "When was {town} founded? Give the year."),
       "river": ("Which river runs through {town}?", "Name the river of {town}.")}
CALC = ("What is {expr}?", "Compute {expr}.", "Calculate {expr} exactly.")


def _calc_problems(rng: random.Random) -> list[str]:
    """Products of a 5- and a 4-digit number, and sums of three 6-digit numbers."""
    out = [f"{rng.randrange(10_000, 99_999)} * {rng.randrange(1_000, 9_999)}" for _ in range(1500)]
    out += [" + ".join(str(rng.randrange(100_000, 999_999)) for _ in range(3)) for _ in range(1500)]
    return sorted(set(out))


def _exchange(question: str, tool: str, args: dict, result: str) -> tuple[list[dict], str]:
    call = json.dumps({"name": tool, "arguments": args})
    turns = [{"role": "assistant", "content": f"<tool_call>{call}</tool_call>"},
             {"role": "tool", "name": tool, "content": result},
             {"role": "assistant", "content": result}]
    text = (f"{turns[0]['content']}<|im_end|>\n<|im_start|>tool\n{result}<|im_end|>\n"
            f"<|im_start|>assistant\n{result}")
    return turns, text


def _row(question: str, tool: str, args: dict, result: str) -> dict:
    turns, text = _exchange(question, tool, args, result)
    return {"prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": question}],
            "answer": result, "tools": copy.deepcopy(TOOLS), "demonstration": text,
            "demonstration_turns": json.dumps(turns)}


TOOLS = [{"type": "function", "function": dict(s.schema)}
         for s in load_tools(["calculator", "lookup"])]


@TASKS.register("tool_use")
def tool_use(split: str) -> list[dict]:
    """Rows of one split: half arithmetic, half lookups (as far as the lookups go).

    >>> row = tool_use("eval")[0]
    >>> sorted(row), json.loads(row["demonstration_turns"])[1]["content"] == row["answer"]
    (['answer', 'demonstration', 'demonstration_turns', 'prompt', 'tools'], True)
    """
    n = split_size("tool_use", split)
    rng = random.Random(19)
    calc = [("calc", e, p) for e in _calc_problems(rng) if split_of(e) == split for p in CALC]
    look = [("lookup", f"{t}|{a}", p) for t in FACTS for a in ASK if split_of(f"{t}|{a}") == split
            for p in ASK[a]]
    rows = []
    for kind, key, phrasing in draw([calc, look], n, random.Random(7), "tool_use"):
        if kind == "calc":
            rows.append(_row(phrasing.format(expr=key), "calculator", {"expression": key},
                             calculator(key)))
        else:
            town, attr = key.split("|")
            rows.append(_row(phrasing.format(town=town), "lookup",
                             {"entity": town, "attribute": attr}, lookup(town, attr)))
    return rows
