"""JSON found in model text, and value comparison, shared by `json_structure` and `tool_call`."""

from __future__ import annotations

import json
import math
import re
from typing import Any

FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
MAX_STARTS = 32  # candidate '{'/'[' positions tried in prose; bounds the work on 1 MB outputs
_DECODER = json.JSONDecoder()


def find_json(text: str) -> tuple[Any, bool]:
    """(value, clean) for the first JSON object or array in `text`, or (None, False).

    `clean` is True when the text is nothing but that JSON, optionally inside
    one code fence. Otherwise fenced blocks are tried first, then the first
    `MAX_STARTS` positions of `{` or `[` in the prose.

    >>> find_json('{"a": 1}')
    ({'a': 1}, True)
    >>> find_json('Sure! ```json\\n{"a": 1}\\n``` Hope it helps.')
    ({'a': 1}, False)
    >>> find_json('The result is {"a": [1, 2]} as requested.')
    ({'a': [1, 2]}, False)
    >>> find_json('{"a": 1')
    (None, False)
    """
    stripped = text.strip()
    whole = FENCE.fullmatch(stripped)
    body = whole.group(1).strip() if whole else stripped
    value = loads_or_none(body)
    if isinstance(value, (dict, list)):
        return value, True
    for block in FENCE.findall(text):
        value = loads_or_none(block.strip())
        if isinstance(value, (dict, list)):
            return value, False
    return _first_embedded(text), False


def _first_embedded(text: str) -> Any:
    starts = 0
    for m in re.finditer(r"[\[{]", text):
        starts += 1
        if starts > MAX_STARTS:
            return None
        try:
            value, _ = _DECODER.raw_decode(text, m.start())
        except (json.JSONDecodeError, RecursionError):  # "[[[[..." from a degenerate policy
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


def loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def as_json(value: Any, field: str, reward: str) -> Any:
    """A row field that may hold JSON text; a string that is not JSON is a data error."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{reward}: row field {field!r} is a string but not JSON ({exc}); "
                         f"store it as an object or a JSON string: {value[:80]!r}") from exc


def same(pred: Any, ref: Any) -> bool:
    """Value equality that forgives what a grader would: case and spacing in
    strings, 3 vs 3.0, and numbers written as strings ("3" vs 3).

    >>> same(" New  York", "new york"), same("3", 3), same(2.5, 2.50000001), same([1, 2], [2, 1])
    (True, True, True, False)
    """
    if isinstance(ref, dict):
        return isinstance(pred, dict) and pred.keys() == ref.keys() \
            and all(same(pred[k], ref[k]) for k in ref)
    if isinstance(ref, list):
        return isinstance(pred, list) and len(pred) == len(ref) \
            and all(same(p, r) for p, r in zip(pred, ref))
    if isinstance(ref, bool) or isinstance(pred, bool) or ref is None or pred is None:
        return pred == ref and type(pred) is type(ref)
    pn, rn = _number(pred), _number(ref)
    if pn is not None and rn is not None:
        return math.isclose(pn, rn, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(pred, str) and isinstance(ref, str):
        return " ".join(pred.casefold().split()) == " ".join(ref.casefold().split())
    return False


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def conforms(value: Any, schema: Any, bad_schema: str) -> bool:
    """`value` is valid under `schema`; an invalid schema raises ValueError(`bad_schema`: why)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{bad_schema}: {exc.message}") from exc
    return validator(schema).is_valid(value)
