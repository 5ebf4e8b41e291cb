"""`to_json_schema`: the BFCL / Python type dialect mapped, recursively; JSON Schema untouched."""

import jsonschema
import pytest

from rlft.rewards.tool_schema import to_json_schema

STANDARD = {"type": "object", "properties": {
    "a": {"type": "array", "items": {"type": "integer"}},
    "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "c": {"type": "object", "additionalProperties": {"type": "number"}}},
    "required": ["a"]}


def test_json_schema_passes_through_unchanged():
    assert to_json_schema(STANDARD) == STANDARD


def test_dialect_is_mapped_in_every_nested_place():
    bfcl = {"type": "dict", "properties": {
        "a": {"type": "list", "items": {"type": "int"}},
        "b": {"anyOf": [{"type": "String"}, {"type": "None"}]},
        "c": {"type": "HashMap", "additionalProperties": {"type": "double"}}},
        "required": ["a"]}
    assert to_json_schema(bfcl) == STANDARD
    assert to_json_schema({"type": "tuple", "prefixItems": [{"type": "float"}, {"type": "bool"}]}) \
        == {"type": "array", "prefixItems": [{"type": "number"}, {"type": "boolean"}]}
    assert to_json_schema({"type": ["float", "double", "null"]}) == {"type": ["number", "null"]}
    assert to_json_schema({"type": ["any", "str"], "description": "x"}) == {"description": "x"}


@pytest.mark.parametrize("value, ok", [({"a": [1, 2], "c": {"k": 1.5}}, True),
                                       ({"a": ["1"]}, False), ({"a": [1], "b": 3}, False)])
def test_mapped_schema_validates(value, ok):
    schema = to_json_schema({"type": "dict", "properties": {
        "a": {"type": "list", "items": {"type": "int"}},
        "b": {"type": ["str", "None"]}, "c": {"type": "dict"}}, "required": ["a"]})
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is ok


def test_input_is_not_modified_and_deep_nesting_stops():
    bfcl = {"type": "dict", "properties": {"x": {"type": "float"}}}
    to_json_schema(bfcl)
    assert bfcl == {"type": "dict", "properties": {"x": {"type": "float"}}}
    deep: dict = {"type": "dict"}
    node = deep
    for _ in range(100):
        node["items"] = {"type": "dict"}
        node = node["items"]
    assert to_json_schema(deep)["type"] == "object"  # no RecursionError
