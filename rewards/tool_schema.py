"""Tool parameter schemas as public function-calling data writes them -> JSON Schema.

The Gorilla / Berkeley Function Calling Leaderboard (BFCL) data and the many
datasets derived from it describe parameters in JSON Schema's shape but with
Python's (and Java's, JavaScript's) type names: `dict`, `float`, `tuple`,
`any`, `list`, `int`, `bool`, `str`, `String`, `HashMap`, ... jsonschema
rejects those ("'dict' is not valid"), so `tool_call` maps them first:

| written (any case)                                    | JSON Schema          |
| ----------------------------------------------------- | -------------------- |
| dict, object, map, hashmap                            | object               |
| float, double, number                                 | number               |
| int, integer, long, short, byte                       | integer              |
| str, string, char                                     | string               |
| bool, boolean                                         | boolean              |
| list, tuple, array, arraylist, set                    | array                |
| null, none                                            | null                 |
| any                                                   | (no type constraint) |

The mapping is applied recursively, in `properties`, `items`,
`prefixItems`, `additionalProperties` and `anyOf`/`oneOf`/`allOf`; a `type`
list (`["str", "null"]`) maps each entry. Standard JSON Schema passes through
unchanged; other names are left as they are, so jsonschema's error names them.
"""

from __future__ import annotations

from typing import Any

TYPE_NAMES: dict[str, str | None] = {
    **dict.fromkeys(("dict", "object", "map", "hashmap"), "object"),
    **dict.fromkeys(("float", "double", "number"), "number"),
    **dict.fromkeys(("int", "integer", "long", "short", "byte"), "integer"),
    **dict.fromkeys(("str", "string", "char"), "string"),
    **dict.fromkeys(("bool", "boolean"), "boolean"),
    **dict.fromkeys(("list", "tuple", "array", "arraylist", "set"), "array"),
    **dict.fromkeys(("null", "none"), "null"),
    "any": None,  # None: drop the constraint
}
# Keywords holding a schema or a list of schemas.
SUBSCHEMAS = ("items", "additionalProperties", "not", "prefixItems", "anyOf", "oneOf", "allOf")
MAX_DEPTH = 32  # a self-nesting schema from bad data must not exhaust the stack


def to_json_schema(schema: Any, depth: int = 0) -> Any:
    """`schema` with the type names above mapped to JSON Schema's (a new object).

    >>> to_json_schema({"type": "dict", "properties": {
    ...     "base": {"type": "float"}, "sides": {"type": "tuple", "items": {"type": "int"}},
    ...     "extra": {"type": "any"}, "unit": {"type": "String", "enum": ["m", "cm"]}},
    ...     "required": ["base"]})  # doctest: +NORMALIZE_WHITESPACE
    {'type': 'object', 'properties': {'base': {'type': 'number'},
     'sides': {'type': 'array', 'items': {'type': 'integer'}}, 'extra': {},
     'unit': {'type': 'string', 'enum': ['m', 'cm']}}, 'required': ['base']}
    >>> to_json_schema({"type": ["str", "null"]})
    {'type': ['string', 'null']}
    """
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return schema
    out = {}
    for key, value in schema.items():  # in order, so the result reads like the input
        if key == "type":
            kind = _type(value)
            if kind is not None:
                out[key] = kind
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: to_json_schema(v, depth + 1) for k, v in value.items()}
        elif key in SUBSCHEMAS and isinstance(value, list):  # also draft-4 tuple `items`
            out[key] = [to_json_schema(v, depth + 1) for v in value]
        elif key in SUBSCHEMAS:
            out[key] = to_json_schema(value, depth + 1)
        else:
            out[key] = value
    return out


def _type(kind: Any) -> Any:
    """One `type` value mapped; None when it constrains nothing (`any`)."""
    if isinstance(kind, str):
        return TYPE_NAMES.get(kind.lower(), kind)
    if isinstance(kind, list):
        mapped = [_type(k) for k in kind]
        if any(k is None for k in mapped):  # `any` in a union: no constraint at all
            return None
        return list(dict.fromkeys(mapped))  # ["float", "double"] -> ["number"] once
    return kind
