"""`json_extract`: pull fields out of a sentence into JSON that meets a schema.

Three record kinds (person, product, meeting), each with its own schema, so
a policy has to read the `schema` rather than learn one fixed shape. The
prompt names the keys and their types in words (a 135M model does not read
JSON Schema); the full schema travels in the row for the `json_structure`
reward. A short system message replaces SmolLM2's long default one. A
problem's split is fixed by a hash of its answer.
"""

from __future__ import annotations

import copy
import json
import random
from itertools import product

from rlft.data.tasks import TASKS, draw, split_of, split_size


def _schema(**props: str) -> dict:
    return {"type": "object", "properties": {k: {"type": t} for k, t in props.items()},
            "required": list(props), "additionalProperties": False}


NAMES = ["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "June",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Pune", "Quito", "Perth", "Turin", "Accra", "Graz"]
GOODS = ["lamp", "kettle", "backpack", "notebook", "umbrella", "scarf", "mug", "chair",
         "blender", "helmet"]
TOPICS = ["budget", "design", "hiring", "launch", "roadmap", "security", "sales", "support"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

KINDS = {
    "person": (_schema(name="string", age="integer", city="string"), (
        "{name} is {age} years old and lives in {city}.",
        "Meet {name}, a {age}-year-old from {city}.",
        "{name} lives in {city} and turned {age} this year.",
    ), lambda: [{"name": n, "age": a, "city": c}
                for n, a, c in product(NAMES, range(18, 80), CITIES)]),
    "product": (_schema(product="string", price="number", in_stock="boolean"), (
        "The {product} costs ${price:.2f} and is {stock}.",
        "Our {product} is {stock}; it sells for ${price:.2f}.",
    ), lambda: [{"product": g, "price": p / 2, "in_stock": s}
                for g, p, s in product(GOODS, range(2, 120), (True, False))]),
    "meeting": (_schema(topic="string", day="string", hour="integer"), (
        "The {topic} meeting is on {day} at {hour}:00.",
        "On {day} at {hour}:00 we meet about {topic}.",
    ), lambda: [{"topic": t, "day": d, "hour": h}
                for t, d, h in product(TOPICS, DAYS, range(8, 19))]),
}
SYSTEM = "Reply with only the JSON object."
TYPE_WORDS = {"string": "string", "integer": "integer", "number": "number",
              "boolean": "true or false"}


def keys_in_words(schema: dict) -> str:
    """'"name" (string), "age" (integer) and "city" (string)'."""
    parts = [f'"{k}" ({TYPE_WORDS[v["type"]]})' for k, v in schema["properties"].items()]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _row(kind: str, answer: dict, rng: random.Random) -> dict:
    schema, phrasings, _ = KINDS[kind]
    stock = "in stock" if answer.get("in_stock") else "out of stock"
    sentence = rng.choice(phrasings).format(**answer, stock=stock)
    reference = json.dumps(answer)
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content":
                   f"{sentence}\nReturn a JSON object with keys {keys_in_words(schema)}."}],
        "schema": copy.deepcopy(schema),  # rows must not share one mutable dict
        "answer": reference,
        "demonstration": reference,
    }


@TASKS.register("json_extract")
def json_extract(split: str) -> list[dict]:
    n = split_size("json_extract", split)
    pools = [[(kind, a) for a in make() if split_of(json.dumps(a, sort_keys=True)) == split]
             for kind, (_, _, make) in KINDS.items()]
    rng = random.Random(11)
    return [_row(kind, answer, rng) for kind, answer in draw(pools, n, rng, "json_extract")]
