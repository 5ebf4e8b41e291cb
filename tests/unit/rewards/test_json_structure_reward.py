"""`json_structure`: each dimension on right, wrong, partial and malformed output."""

import json

import pytest

from rlft.rewards.json_structure import WEIGHTS, json_structure

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
REF = '{"name": "Kofi", "age": 31, "city": "Turin"}'  # as the built-in task stores it


def score(text, **kw):
    return json_structure(text, schema=SCHEMA, answer=REF, **kw)


def test_exact_answer_scores_one_on_every_dimension():
    r = score(REF)
    assert r == {"total": 1.0, "parsed": 1.0, "clean": 1.0, "schema": 1.0, "keys": 1.0,
                 "fields": 1.0}


def test_fenced_json_is_clean_prose_around_it_is_not():
    assert score(f"```json\n{REF}\n```")["clean"] == 1.0
    r = score(f"Here you go:\n```json\n{REF}\n```\nAnything else?")
    assert (r["parsed"], r["clean"], r["fields"]) == (1.0, 0.0, 1.0)
    # weights 1, .5, 1, 1, 2 -> total = (1 + 0 + 1 + 1 + 2) / 5.5 = 5 / 5.5
    assert r["total"] == pytest.approx(5 / 5.5)


def test_partial_missing_key_and_wrong_value():
    r = score('{"name": "Kofi", "age": 30}')
    # schema fails (city required), keys 2/3, fields: name right, age wrong, city missing -> 1/3
    assert (r["schema"], r["keys"], r["fields"]) == (0.0, pytest.approx(2 / 3), pytest.approx(1 / 3))
    want = (1 * 1 + 0.5 * 1 + 1 * 0 + 1 * (2 / 3) + 2 * (1 / 3)) / 5.5
    assert r["total"] == pytest.approx(want)


def test_extra_key_breaks_the_schema_only():
    r = score('{"name": "Kofi", "age": 31, "city": "Turin", "job": "chef"}')
    assert (r["schema"], r["keys"], r["fields"]) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("text", [
    '{"name": "Kofi", "age": 31, "city": "Turin"',   # unclosed
    "{name: 'Kofi', age: 31}",                       # not JSON
    "",
    "I don't know.",
])
def test_malformed_output_scores_zero(text):
    r = score(text)
    assert r["total"] == 0.0 and r["parsed"] == 0.0 and r["fields"] == 0.0


def test_unicode_values_match():
    ref = {"name": "Zoë", "city": "Kraków"}
    r = json_structure('{"name": "ZOË", "city": "kraków"}', answer=ref)
    assert r["fields"] == 1.0 and "schema" not in r  # no schema: dimension left out


def test_megabyte_of_prose_with_braces_stays_bounded():
    text = "{x " * 400_000 + REF  # 1.2 MB of brace noise before the object
    r = score(text)
    assert r["parsed"] == 0.0  # gave up after MAX_STARTS candidates, in bounded time


def test_reference_only_and_schema_only():
    r = json_structure('{"a": 1}', answer={"a": 1})
    assert set(r) == {"total", "parsed", "clean", "keys", "fields"} and r["total"] == 1.0
    r = json_structure('{"name": "x", "age": 1, "city": "y"}', schema=json.dumps(SCHEMA))
    assert r["schema"] == 1.0 and "fields" not in r


def test_custom_weights_and_bad_inputs():
    r = score('{"name": "Kofi"}', weights={k: 0.0 for k in WEIGHTS} | {"fields": 1.0})
    assert r["total"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown weights"):
        score(REF, weights={"style": 1.0})
    with pytest.raises(ValueError, match="row field 'answer'"):
        json_structure(REF, answer="{not json")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        json_structure(REF, schema={"type": "nonsense"})


def test_fields_loop_reference():
    """`fields` equals an explicit loop over the reference keys."""
    ref = json.loads(REF)
    for pred in [{"name": "kofi"}, {"age": "31", "city": "Rome"}, {}, ref]:
        hits = 0
        for key, want in ref.items():
            got = pred.get(key)
            hits += (str(got).casefold() == str(want).casefold()) if key in pred else 0
        assert score(json.dumps(pred))["fields"] == pytest.approx(hits / 3)
