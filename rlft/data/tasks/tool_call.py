"""`tool_call`: choose the right tool and call it with the right arguments.

Every row offers the same four tools (OpenAI-style function specs in
`tools`), so the policy must pick one and fill its arguments from the
request. The prompt is only the user's request: `rlft.data.prompts.build_prompts`
shows the tools to the model (through the chat template when it renders
tools, else as a system message). The reference `answer` is the call as a
JSON string; the `demonstration` is that call in `<tool_call>` tags. A
problem's split is fixed by a hash of the call.
"""

from __future__ import annotations

import copy
import json
import random
from itertools import product

from rlft.data.tasks import TASKS, draw, split_of, split_size


def _fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required}}}


TOOLS = [
    _fn("get_weather", "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        ["city"]),
    _fn("convert_currency", "Convert an amount of money between currencies.",
        {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
        ["amount", "from", "to"]),
    _fn("set_timer", "Start a countdown timer.", {"minutes": {"type": "integer"}}, ["minutes"]),
    _fn("search_flights", "Find flights between two cities on a date (YYYY-MM-DD).",
        {"origin": {"type": "string"}, "destination": {"type": "string"},
         "date": {"type": "string"}},
        ["origin", "destination", "date"]),
]
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Seoul", "Nairobi",
          "Denver", "Madrid", "Hanoi", "Dublin", "Sydney", "Toronto", "Bogota"]
# Weather calls have few arguments, so they get more cities to stay a real share.
WEATHER_CITIES = CITIES + ["Berlin", "Vienna", "Prague", "Lisbon", "Athens", "Warsaw", "Quito",
                           "Manila", "Jakarta", "Bangkok", "Lagos", "Dakar", "Accra", "Havana",
                           "Boston", "Chicago", "Austin", "Miami", "Seattle", "Phoenix",
                           "Montreal", "Calgary", "Auckland", "Perth"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "INR", "CHF"]


def _pools() -> list[list[tuple[str, dict]]]:
    """(request, call) pairs per tool; each call is asked one way."""
    weather = [(f"What's the weather in {c}" + (f", in degrees {u}?" if u else "?"),
                {"city": c, **({"unit": u} if u else {})})
               for c, u in product(WEATHER_CITIES, ("C", "F", ""))]
    money = [(f"Convert {amt} {a} to {b}.", {"amount": amt, "from": a, "to": b})
             for amt, a, b in product(range(10, 1001, 10), CURRENCIES, CURRENCIES) if a != b]
    timer = [(f"Set a timer for {m} minutes.", {"minutes": m}) for m in range(1, 181)]
    flights = [(f"Find me a flight from {o} to {d} on 2025-{mo:02d}-{day:02d}.",
                {"origin": o, "destination": d, "date": f"2025-{mo:02d}-{day:02d}"})
               for o, d, mo, day in product(CITIES, CITIES, (3, 4), range(1, 29)) if o != d]
    names = [t["function"]["name"] for t in TOOLS]
    return [[(req, {"name": name, "arguments": args}) for req, args in pool]
            for name, pool in zip(names, (weather, money, timer, flights))]


@TASKS.register("tool_call")
def tool_call(split: str) -> list[dict]:
    n = split_size("tool_call", split)
    pools = [[(req, call) for req, call in pool
              if split_of(json.dumps(call, sort_keys=True)) == split] for pool in _pools()]
    rows = []
    for request, call in draw(pools, n, random.Random(13), "tool_call"):
        reference = json.dumps(call)
        rows.append({"prompt": request, "tools": copy.deepcopy(TOOLS), "answer": reference,
                     "demonstration": f"<tool_call>{reference}</tool_call>"})
    return rows
