"""`tool_call`: choose the right tool and call it with the right arguments."""

from __future__ import annotations

import json
import random

from rlft.tasks import TASKS, split_size


def _fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required}}}


TOOLS = [
    _fn("get_weather", "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        ["city"]),
    _fn("convert_currency", "Convert an amount between currencies.",
        {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
        ["amount", "from", "to"]),
    _fn("set_timer", "Start a countdown timer.", {"minutes": {"type": "integer"}}, ["minutes"]),
]
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Seoul"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "INR"]


def _problem(rng: random.Random) -> tuple[str, dict]:
    kind = rng.randrange(3)
    if kind == 0:
        city, unit = rng.choice(CITIES), rng.choice("CF")
        return (f"What's the weather in {city}, in degrees {unit}?",
                {"name": "get_weather", "arguments": {"city": city, "unit": unit}})
    if kind == 1:
        amount, a, b = rng.randint(1, 500), *rng.sample(CURRENCIES, 2)
        return (f"Convert {amount} {a} to {b}.",
                {"name": "convert_currency", "arguments": {"amount": amount, "from": a, "to": b}})
    minutes = rng.randint(1, 90)
    return (f"Set a timer for {minutes} minutes.",
            {"name": "set_timer", "arguments": {"minutes": minutes}})


@TASKS.register("tool_call")
def tool_call(split: str) -> list[dict]:
    n = split_size("tool_call", split)
    rng = random.Random(13 if split == "train" else 14)
    rows, seen = [], set()
    # Train skips every call that eval holds, so the splits stay disjoint.
    eval_keys = set() if split == "eval" else {
        json.dumps(json.loads(r["answer"]), sort_keys=True) for r in tool_call("eval")}
    while len(rows) < n:
        prompt, call = _problem(rng)
        key = json.dumps(call, sort_keys=True)
        if key in seen or key in eval_keys:
            continue
        seen.add(key)
        rows.append({"prompt": prompt, "tools": TOOLS, "answer": json.dumps(call),
                     "demonstration": f"<tool_call>{json.dumps(call)}</tool_call>"})
    return rows
