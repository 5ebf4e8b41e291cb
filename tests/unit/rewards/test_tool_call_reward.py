"""`tool_call`: formats, tool names, argument names/types, values, partial credit."""

import json

import pytest

from rlft.rewards.tool_call import Call, parse_calls, tool_call


def spec(name, props, required, openai=True):
    fn = {"name": name, "description": "", "parameters": {
        "type": "object", "properties": props, "required": required}}
    return {"type": "function", "function": fn} if openai else fn


TOOLS = [
    spec("get_weather", {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
         ["city"]),
    spec("set_timer", {"minutes": {"type": "integer"}}, ["minutes"], openai=False),
]
REF = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}})


def score(text, **kw):
    return tool_call(text, tools=TOOLS, answer=REF, **kw)


@pytest.mark.parametrize("text", [
    REF,
    f"<tool_call>\n{REF}\n</tool_call>",
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"C\\"}"}',
    '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "oslo", "unit": "C"}}}',
    '{"tool_calls": [{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"C\\"}"}}]}',
    f"Let me check.\n```json\n[{REF}]\n```",
    '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "C"}}',
])
def test_formats_of_a_correct_call_all_score_one(text):
    assert score(text)["total"] == 1.0


def test_wrong_tool_name():
    r = score('{"name": "get_forecast", "arguments": {"city": "Oslo", "unit": "C"}}')
    assert (r["parsed"], r["name"], r["arg_names"], r["arg_types"], r["values"]) == (1, 0, 0, 0, 0)
    assert r["total"] == pytest.approx(1 / 7)  # only `parsed` (weight 1 of 7)


def test_extra_argument_and_wrong_type_cost_their_parts():
    r = score('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "K", "days": 3}}')
    # names: "days" undeclared -> 0; types: "K" not in enum -> 0;
    # values over {city, unit, days}: only city matches -> 1/3
    assert (r["name"], r["arg_names"], r["arg_types"]) == (1.0, 0.0, 0.0)
    assert r["values"] == pytest.approx(1 / 3)
    assert r["total"] == pytest.approx((1 + 2 + 0 + 0 + 2 / 3) / 7)


def test_missing_required_argument():
    r = score('<tool_call>{"name": "get_weather", "arguments": {"unit": "C"}}</tool_call>')
    assert (r["arg_names"], r["arg_types"]) == (0.0, 0.0)
    assert r["values"] == pytest.approx(1 / 2)


def test_two_reference_calls_paired_by_name_with_one_missing():
    ref = [{"name": "set_timer", "arguments": {"minutes": 5}}, json.loads(REF)]
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}</tool_call>'
    r = tool_call(text, tools=TOOLS, answer=ref)
    # pairs: (weather, weather) perfect; (None, set_timer) zero -> every part 1/2
    assert (r["name"], r["values"], r["arg_names"], r["arg_types"]) == (0.5, 0.5, 0.5, 0.5)


def test_unicode_values_and_arguments_not_an_object():
    r = score('{"name": "get_weather", "arguments": {"city": "OSLO", "unit": "C"}}')
    assert r["values"] == 1.0
    r = score('{"name": "get_weather", "arguments": "city=Oslo"}')
    assert (r["name"], r["arg_names"], r["values"]) == (1.0, 0.0, 0.0)
    r = tool_call('{"name": "get_weather", "arguments": {"city": "Zürich"}}', tools=TOOLS,
                  answer={"name": "get_weather", "arguments": {"city": "zürich"}})
    assert r["total"] == 1.0


@pytest.mark.parametrize("text", ["", "no tools today", "<tool_call>{broken</tool_call>",
                                  '{"arguments": {"city": "Oslo"}}'])
def test_malformed_scores_zero(text):
    assert score(text)["total"] == 0.0


def test_megabyte_output():
    text = "blah " * 200_000 + f"<tool_call>{REF}</tool_call>"
    assert score(text)["total"] == 1.0


def test_without_reference_checks_against_tools_only():
    r = tool_call('{"name": "set_timer", "arguments": {"minutes": 5}}', tools=TOOLS)
    parts = {k for k in r if not k.startswith("err_")}
    assert parts == {"total", "parsed", "name", "arg_names", "arg_types"} and r["total"] == 1.0
    assert {v for k, v in r.items() if k.startswith("err_")} == {0.0}  # no error category
    r = tool_call('{"name": "launch", "arguments": {}}', tools=TOOLS)
    assert r["name"] == 0.0


def test_bad_rows_are_data_errors_naming_the_field():
    with pytest.raises(ValueError, match="row field 'answer'"):
        tool_call(REF, answer="just words")
    with pytest.raises(ValueError, match="row field 'tools'"):
        tool_call(REF, tools=[{"description": "no name"}])


def test_parse_calls_keeps_order_and_skips_junk():
    text = ('<tool_call>{"name": "a", "arguments": {}}</tool_call> and '
            '<tool_call>not json</tool_call><tool_call>{"name": "b"}</tool_call>')
    assert parse_calls(text) == [Call("a", {}), Call("b", {})]


# ---- Gorilla / BFCL data: Python type names, accepted alternatives, omissible arguments ----

# As in BFCL's simple category: a bare spec with "dict"/"float"/"tuple"/"any" types.
AREA = [{"name": "calculate_triangle_area", "description": "Area of a triangle.",
         "parameters": {"type": "dict", "properties": {
             "base": {"type": "float"}, "height": {"type": "float"},
             "unit": {"type": "string", "description": "Unit of length."},
             "sides": {"type": "tuple", "items": {"type": "integer"}},
             "meta": {"type": "any"}},
             "required": ["base", "height"]}}]
AREA_REF = [{"calculate_triangle_area": {"base": [10], "height": [5, 5.0],
                                         "unit": ["units", "cm", ""]}}]


def area(args, answer=AREA_REF):
    text = json.dumps({"name": "calculate_triangle_area", "arguments": args})
    return tool_call(text, tools=AREA, answer=answer)


@pytest.mark.parametrize("args", [
    {"base": 10, "height": 5},                      # optional "unit" left out
    {"base": 10, "height": 5, "unit": "units"},
    {"base": 10.0, "height": 5, "unit": "CM"},      # the second accepted unit
])
def test_bfcl_row_full_credit_for_any_accepted_call(args):
    r = area(args)
    assert {k: v for k, v in r.items() if not k.startswith("err_")} == {
        "total": 1.0, "parsed": 1.0, "name": 1.0, "arg_names": 1.0, "arg_types": 1.0,
        "values": 1.0}
    assert {v for k, v in r.items() if k.startswith("err_")} == {0.0}


def test_bfcl_row_wrong_and_unaccepted_values_cost():
    r = area({"base": 10, "height": 6})
    assert r["values"] == pytest.approx(1 / 2)  # over {base, height}
    r = area({"base": 10, "height": 5, "unit": "inches"})
    assert r["values"] == pytest.approx(2 / 3)  # a given optional argument is still checked
    r = area({"base": 10})  # a required argument missing: names and values lose
    assert (r["arg_names"], r["values"]) == (0.0, 0.5)


def test_bfcl_types_validate_as_json_schema():
    assert area({"base": 10, "height": 5, "sides": [3, 4, 5], "meta": {"x": None}})["arg_types"] == 1
    assert area({"base": "ten", "height": 5})["arg_types"] == 0.0     # float
    assert area({"base": 10, "height": 5, "sides": "3,4"})["arg_types"] == 0.0  # tuple


def test_bfcl_reference_as_json_text_and_unknown_type_names_the_dialect():
    assert area({"base": 10, "height": 5}, answer=json.dumps(AREA_REF))["total"] == 1.0
    tools = [{"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "kg"}}}}]
    with pytest.raises(ValueError, match="not a valid JSON Schema.*dict, float, tuple, any"):
        tool_call('{"name": "f", "arguments": {"x": 1}}', tools=tools)


def test_bfcl_parallel_calls_and_dict_valued_arguments():
    ref = [{"book": {"room": [{"kind": ["single", "double"], "view": ["sea", ""]}],
                     "nights": [2]}},
           {"pay": {"card": [True]}}]
    text = ('[{"name": "pay", "arguments": {"card": true}}, '
            '{"name": "book", "arguments": {"room": {"kind": "double"}, "nights": 2}}]')
    assert tool_call(text, answer=ref)["total"] == 1.0
    wrong = text.replace('"kind": "double"', '"kind": "double", "floor": 3')  # unknown key
    assert tool_call(wrong, answer=ref)["values"] == pytest.approx((1 + 1 / 2) / 2)


def test_explicit_form_with_alternatives_and_optional_arguments():
    ref = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"},
           "alternatives": {"city": ["Oslo, Norway"], "unit": ["celsius"]}, "optional": ["unit"]}
    for args in ({"city": "Oslo"}, {"city": "oslo, norway", "unit": "Celsius"}):
        text = json.dumps({"name": "get_weather", "arguments": args})
        assert tool_call(text, tools=TOOLS, answer=ref)["values"] == 1.0
    r = tool_call(json.dumps({"name": "get_weather", "arguments": {"city": "Bergen"}}),
                  tools=TOOLS, answer=[ref])
    assert r["values"] == 0.0
    with pytest.raises(ValueError, match="row field 'answer': 'alternatives' must map"):
        tool_call(REF, answer={**ref, "alternatives": {"unit": "celsius"}})
    with pytest.raises(ValueError, match="'optional' must be a list"):
        tool_call(REF, answer={**ref, "optional": "unit"})


def test_a_plain_reference_keeps_every_argument_required():
    ref = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}
    r = tool_call('{"name": "get_weather", "arguments": {"city": "Oslo"}}', answer=ref)
    assert r["values"] == 0.5


# ---- error categories (TL-Training) and multi-turn conversations ----

def test_each_error_category_is_named():
    cases = {
        '<tool_call>get_weather(Oslo)</tool_call>': "err_unparsed",
        '{"name": "get_wether", "arguments": {"city": "Oslo", "unit": "C"}}': "err_name",
        '{"name": "get_weather", "arguments": {"unit": "C"}}': "err_missing_args",
        '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C", "day": 1}}':
            "err_extra_args",
        '{"name": "get_weather", "arguments": {"city": 7, "unit": "C"}}': "err_types",
        '{"name": "get_weather", "arguments": {"city": "Bergen", "unit": "C"}}': "err_values",
    }
    for text, category in cases.items():
        r = score(text)
        assert {k for k, v in r.items() if k.startswith("err_") and v > 0} == {category}, text
        assert r[category] == 1.0


def test_conversation_calls_of_every_turn_are_scored():
    call = '<tool_call>{"name": "set_timer", "arguments": {"minutes": 5}}</tool_call>'
    talk = [{"role": "assistant", "content": call},
            {"role": "tool", "name": "set_timer", "content": "ok"},
            {"role": "assistant", "content": "<tool_call>oops</tool_call>"},
            {"role": "tool", "name": "?", "content": "Error: ..."},
            {"role": "assistant", "content": "Done."}]
    r = tool_call("Done.", tools=TOOLS, answer="Done.", answer_is_call=False, conversation=talk)
    assert (r["total"], r["parsed"], r["turns_with_calls"]) == (1.0, 1.0, 1.0)
    assert r["err_unparsed"] == 0.5  # one good call, one unreadable block
    assert tool_call("Done.", tools=TOOLS, answer_is_call=False)["total"] == 0.0


def turn(*names_and_args):
    calls = "".join(f'<tool_call>{json.dumps({"name": n, "arguments": a})}</tool_call>'
                    for n, a in names_and_args)
    return [{"role": "assistant", "content": calls}, {"role": "tool", "content": "ok"}]


def test_per_turn_scoring_pairs_each_calling_turn_with_its_reference():
    weather = ("get_weather", {"city": "Oslo"})
    timer = ("set_timer", {"minutes": 5})
    refs = [[{"name": "get_weather", "arguments": {"city": "Oslo"}},  # turn 1: two calls
             {"name": "set_timer", "arguments": {"minutes": 5}}],
            {"name": "set_timer", "arguments": {"minutes": 5}}]  # turn 2: one
    end = [{"role": "assistant", "content": "Done."}]

    def per_turn(talk):
        return tool_call("Done.", tools=TOOLS, answer=refs, conversation=talk + end,
                         per_turn=True)

    assert per_turn(turn(weather, timer) + turn(timer))["total"] == 1.0
    # The same three calls, split 1 + 2 instead of 2 + 1: pooled pairing gives full
    # credit, per turn the weather call is alone in turn 1 and turn 2 has an extra.
    moved = turn(weather) + turn(timer, timer)
    assert tool_call("Done.", tools=TOOLS, answer=json.dumps([*refs[0], refs[1]]),
                     conversation=moved + end)["total"] == 1.0
    r = per_turn(moved)
    assert (r["name"], r["values"]) == (pytest.approx(2 / 4), pytest.approx(2 / 4))
    missing = per_turn(turn(weather, timer))  # turn 2 never came: its reference is missed
    assert missing["name"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one reference per calling turn"):
        tool_call("x", answer={"name": "a", "arguments": {}}, conversation=end, per_turn=True)
