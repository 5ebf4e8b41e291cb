"""`json_extract`: pull fields out of a sentence into JSON that meets a schema."""

from __future__ import annotations

import json
import random

from rlft.tasks import TASKS, split_size

NAMES = ["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "June"]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Pune", "Quito", "Perth", "Turin", "Accra", "Graz"]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@TASKS.register("json_extract")
def json_extract(split: str) -> list[dict]:
    n = split_size("json_extract", split)
    combos = [(nm, age, c) for nm in NAMES for age in range(18, 80) for c in CITIES]
    random.Random(11).shuffle(combos)
    chosen = combos[:n] if split == "train" else combos[-n:]
    rows = []
    for name, age, city in chosen:
        answer = {"name": name, "age": age, "city": city}
        rows.append({
            "prompt": f"{name} is {age} years old and lives in {city}. Return a JSON object "
                      f"with keys name, age and city.",
            "schema": SCHEMA,
            "answer": json.dumps(answer),
            "demonstration": json.dumps(answer),
        })
    return rows
