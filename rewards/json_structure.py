"""`json_structure`: how well does a completion deliver the JSON the row asks for?

Dimensions (each in [0, 1], each logged as `json_structure/<dim>`):
  parsed  a JSON object/array was found (code fences and surrounding prose tolerated)
  clean   nothing but the JSON was written (one code fence allowed)
  schema  it conforms to the row's JSON Schema (`schema`; jsonschema)
  keys    fraction of required keys present (the schema's `required`, else the
          reference's keys)
  fields  fraction of the reference's (`answer`) top-level fields matched
          (case/space-insensitive strings, 3 == 3.0 == "3", nested values exact)
Dimensions without their input (no schema, no reference) are left out, and
`total` is the weighted mean of the ones present. Nothing found -> total 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlft.rewards.base import reward
from rlft.rewards.jsontext import as_json, conforms, find_json, same

WEIGHTS = {"parsed": 1.0, "clean": 0.5, "schema": 1.0, "keys": 1.0, "fields": 2.0}


@reward("json_structure", reads=("answer", "schema"))
def json_structure(completion: str, *, schema: Any = None, answer: Any = None,
                   weights: Mapping[str, float] | None = None, **fields: Any) -> dict[str, float]:
    """Component scores and their weighted mean (`total`); see the module docstring.

    >>> schema = {"type": "object", "required": ["name", "age"],
    ...           "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    >>> ref = '{"name": "Kofi", "age": 31}'
    >>> json_structure('{"name": "kofi", "age": 31}', schema=schema, answer=ref)["total"]
    1.0
    >>> r = json_structure('Here: {"name": "Ama", "age": "31"}', schema=schema, answer=ref)
    >>> r["clean"], r["schema"], r["keys"], r["fields"]   # age is a string; the name is wrong
    (0.0, 0.0, 1.0, 0.5)
    >>> json_structure("{name: Kofi", schema=schema, answer=ref)["total"]
    0.0
    """
    w = {**WEIGHTS, **(weights or {})}
    unknown = set(w) - set(WEIGHTS)
    if unknown:
        raise ValueError(f"json_structure: unknown weights {sorted(unknown)}; "
                         f"dimensions are {', '.join(WEIGHTS)}")
    schema = as_json(schema, "schema", "json_structure")
    ref = as_json(answer, "answer", "json_structure")
    value, clean = find_json(completion)
    dims = {"parsed": float(value is not None), "clean": float(clean)}
    if schema is not None:
        dims["schema"] = float(value is not None and _conforms(value, schema))
    required = _required(schema, ref)
    if required:
        present = value.keys() & required if isinstance(value, dict) else set()
        dims["keys"] = len(present) / len(required)
    if isinstance(ref, dict) and ref:
        got = value if isinstance(value, dict) else {}
        dims["fields"] = sum(k in got and same(got[k], v) for k, v in ref.items()) / len(ref)
    elif ref is not None:
        dims["fields"] = float(value is not None and same(value, ref))
    total = sum(w[k] * v for k, v in dims.items()) / sum(w[k] for k in dims)
    return {"total": total if value is not None else 0.0, **dims}


def _conforms(value: Any, schema: Any) -> bool:
    return conforms(value, schema, "json_structure: row field 'schema' is not a valid JSON Schema")


def _required(schema: Any, ref: Any) -> set[str]:
    if isinstance(schema, dict) and isinstance(schema.get("required"), list):
        return set(schema["required"])
    return set(ref) if isinstance(ref, dict) else set()
