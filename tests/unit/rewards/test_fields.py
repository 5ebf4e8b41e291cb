"""Declared reward inputs that no row has: the warning, the guessed field map, and the
degradation it warns about, shown with real reward calls."""

import json
import textwrap

import pytest

from rlft.data.prompts import build_prompts
from rlft.rewards.base import RewardTerm, declared_reads, resolve, reward
from rlft.rewards.fields import field_warnings, guess_column, missing_field_warnings
from rlft.rewards.json_structure import json_structure
from rlft.rewards.tool_call import tool_call

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
          "required": ["city", "year"]}
JSON_ROWS = [{"question": "Where and when? Oslo, 1999.", "gold": '{"city": "Oslo", "year": 1999}',
              "json_schema": json.dumps(SCHEMA)}]
MISSING_KEY = '{"city": "Oslo"}'  # "year" is required


def rows_as_rewards_get_them(rows, field_map):
    """Rows renamed and parsed by the data pipeline training uses (no tokenizer needed)."""
    return [p.fields for p in build_prompts(rows, None, field_map=field_map).prompts]


def test_json_rows_in_their_own_names_degrade_and_are_named():
    fields = rows_as_rewards_get_them(JSON_ROWS, {"question": "prompt"})[0]
    # Today's silent degradation: no schema, no reference -> a missing key scores 1.0.
    assert json_structure(MISSING_KEY, **fields)["total"] == 1.0
    warnings = field_warnings([RewardTerm("json_structure")], [fields], {"question": "prompt"})
    fix = "data.field_map={question: prompt, gold: answer, json_schema: schema}"
    assert len(warnings) == 2 and all(fix in w for w in warnings)
    assert "reward 'json_structure' reads row field 'answer', which no row has" in warnings[0]
    assert "row field 'schema'" in warnings[1]
    assert "The rows' columns: gold, json_schema." in warnings[0]
    # The suggested map, applied: the same completion now loses its keys and schema parts.
    mapped = {"question": "prompt", "gold": "answer", "json_schema": "schema"}
    fields = rows_as_rewards_get_them(JSON_ROWS, mapped)[0]
    r = json_structure(MISSING_KEY, **fields)
    assert (r["schema"], r["keys"], r["fields"]) == (0.0, 0.5, 0.5) and r["total"] < 0.6
    assert field_warnings([RewardTerm("json_structure")], [fields], mapped) == []


def test_tool_rows_without_answer_leave_values_out_and_are_named():
    tools = [{"name": "set_timer", "parameters": {"type": "object",
                                                  "properties": {"minutes": {"type": "integer"}}}}]
    row = {"prompt": "Timer, 5 minutes", "tools": tools,
           "reference_call": {"name": "set_timer", "arguments": {"minutes": 5}}}
    wrong = '{"name": "set_timer", "arguments": {"minutes": 50}}'
    fields = rows_as_rewards_get_them([row], {})[0]
    r = tool_call(wrong, **fields)
    assert "values" not in r and r["total"] == 1.0  # wrong value, full marks
    [w] = field_warnings([RewardTerm("tool_call")], [fields])
    assert "row field 'answer'" in w and w.endswith("data.field_map={reference_call: answer}")
    fields = rows_as_rewards_get_them([row], {"reference_call": "answer"})[0]
    assert tool_call(wrong, **fields)["values"] == 0.0
    assert field_warnings([RewardTerm("tool_call")], [fields]) == []


def test_a_field_in_some_row_is_not_missing_and_none_counts_as_absent():
    reads = {"accuracy": [["answer"]]}
    assert missing_field_warnings(reads, [{"answer": None}, {"answer": "4"}]) == []
    [w] = missing_field_warnings(reads, [{"answer": None, "id": 1}])
    assert "The rows' columns: id." in w and "data.field_map={<column>: answer}" in w


def test_shared_fields_one_warning_alternatives_and_kwargs():
    reads = {"accuracy": [["answer"]], "cosine": [["answer", "demonstration"]]}
    [w] = missing_field_warnings({"accuracy": [["answer"]], "json_structure": [["answer"]]},
                                 [{"x": 1}])
    assert w.startswith("rewards 'accuracy', 'json_structure' read row field 'answer'")
    assert len(missing_field_warnings(reads, [{"demonstration": "d"}])) == 1  # cosine is fine
    w = missing_field_warnings({"cosine": [["answer", "demonstration"]]}, [{}])[0]
    assert "row field 'answer' (or 'demonstration')" in w and "no column besides" in w
    # A field the term's kwargs supply is not read from the rows.
    assert field_warnings([RewardTerm("json_structure", kwargs={"schema": SCHEMA})],
                          [{"answer": "{}"}]) == []
    # cosine picks its field from kwargs: reads is a function of them.
    assert declared_reads(resolve("cosine"), {"reference": "gold"}) == (("gold",),)
    assert declared_reads(resolve("cosine"), {}) == (("answer", "demonstration"),)


def test_user_rewards_declare_too(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent('''
        from rlft.rewards import reward

        @reward(reads=("label",))
        def right_label(completion, *, label=None, **fields):
            return None if label is None else float(completion == label)

        def undeclared(completion, **fields):
            return 1.0
    '''))
    terms = [RewardTerm(f"{path}:right_label"), RewardTerm(f"{path}:undeclared")]
    [w] = field_warnings(terms, [{"category": "a"}])
    assert w.startswith("reward 'right_label' reads row field 'label'")
    assert "data.field_map={<column>: label}" in w
    with pytest.raises(TypeError, match="reads must be a tuple of row field names"):
        reward(reads="answer")
    picky = reward(reads=lambda: ("label",))(lambda completion, **fields: 1.0)
    with pytest.raises(TypeError, match="reads function must take the term's kwargs"):
        declared_reads(picky, {"mode": "exact"})


def test_guesses():
    assert guess_column("answer", ["ground_truth", "id"]) == "ground_truth"
    assert guess_column("tools", ["function", "question"]) == "function"  # BFCL's names
    assert guess_column("answer", ["answr"]) == "answr"  # a close spelling
    assert guess_column("demonstration", ["id", "question"]) is None
    # A column goes to one field only; each warning shows the whole map.
    [w1, w2] = missing_field_warnings({"r": [["answer"], ["schema"]]}, [{"gold": "x"}])
    assert w1.endswith("{gold: answer}") and w2.endswith("{gold: answer, <column>: schema}")
