"""Parsers never crash with anything but their documented error.

- `load_config` (YAML file + `key=value` overrides): a `Config` or `ConfigError`;
  a config it accepts has every bounded field inside its bounds.
- `find_json` / `parse_calls` read model output: any text gives a value, never
  an exception (a crash there is a reward failure on every sample that hits it).
- `tool_call` / `json_structure` on any completion, with a valid row: a score in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from rlft.config import Config, ConfigError, describe, load_config
from rlft.rewards.json_structure import json_structure
from rlft.rewards.jsontext import find_json
from rlft.rewards.tool_call import Call, parse_calls, tool_call

PATHS = [path for path, _, _ in describe(Config)]
YAMLISH = st.text(alphabet=st.sampled_from(list("[]{}:,'\"-#&*!|>%@`?=. \n\t0123456789aeEnx_")),
                  max_size=24)
VALUES = st.one_of(
    YAMLISH, st.text(max_size=12),
    st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
    st.sampled_from([".nan", ".inf", "-.inf", "1e400", "~", "null", "true", "[]", "{}",
                     "2020-01-01", "0x1F", "1_000", "!!python/object:os.system ''"]),
)
KEYS = st.one_of(st.sampled_from(PATHS), st.text(max_size=16),
                 st.lists(st.sampled_from(["model", "train", "steps", "", "x", "terms", "0"]),
                          min_size=1, max_size=4).map(".".join))


def _bounded_fields_ok(obj) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _bounded_fields_ok(value)
        elif isinstance(value, list):
            for v in value:
                if dataclasses.is_dataclass(v):
                    _bounded_fields_ok(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            assert not math.isnan(value), f.name
            assert lo is None or value >= lo, (f.name, value)
            assert hi is None or value <= hi, (f.name, value)
            choices = f.metadata.get("choices")
            assert not choices or value in choices


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=30)),
                max_size=4))
@example(["train.lr=.nan"])
@example(["train.lr=1" + "0" * 400])
@example(["rollout.stop=[a"])
@example(["model=3", "model.name=x"])
def test_overrides_give_a_config_or_a_config_error(items):
    try:
        cfg = load_config(None, items)
    except ConfigError:
        return
    _bounded_fields_ok(cfg)


@settings(max_examples=200, deadline=None)
@given(st.one_of(YAMLISH, st.text(max_size=200),
                 st.dictionaries(st.sampled_from(["train", "model", "ray", "x", "reward"]),
                                 st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                              lambda c: st.lists(c, max_size=3)
                                              | st.dictionaries(st.text(max_size=5), c,
                                                                max_size=3)),
                                 max_size=3).map(json.dumps)))
@example("train: [1,\n")
@example("train:\n  steps: !!python/object/apply:os.system ['true']\n")
def test_config_files_give_a_config_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        try:
            cfg = load_config(str(path))
        except ConfigError:
            return
        _bounded_fields_ok(cfg)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                         max_size=4),
                    max_leaves=12)
MODEL_TEXT = st.one_of(
    st.text(max_size=300),
    st.tuples(st.text(max_size=40), JSON.map(json.dumps), st.text(max_size=40)).map(
        lambda t: f"{t[0]}```json\n{t[1]}\n```{t[2]}"),
    st.tuples(st.text(max_size=20), JSON.map(json.dumps)).map(
        lambda t: f"{t[0]}<tool_call>{t[1]}</tool_call>"),
    JSON.map(json.dumps).map(lambda s: s[: len(s) // 2]),  # cut off mid-value
    st.integers(1, 5000).map(lambda n: "[" * n),
    st.integers(1, 3000).map(lambda n: "x {" + '"a":[' * n),
)


@settings(max_examples=400, deadline=None)
@given(MODEL_TEXT)
@example("[" * 100_000)
@example("<tool_call>" + "[" * 990 + "]" * 990 + "</tool_call>")
@example("prose " + "[" * 995 + "]" * 995)
def test_find_json_and_parse_calls_never_raise(text):
    value, clean = find_json(text)
    assert value is None or isinstance(value, (dict, list))
    assert isinstance(clean, bool) and (value is not None or not clean)
    calls = parse_calls(text)
    assert all(isinstance(c, Call) and isinstance(c.name, str)
               and (c.arguments is None or isinstance(c.arguments, dict)) for c in calls)


TOOLS = [{"type": "function", "function": {"name": "set_timer", "parameters": {
    "type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["name"]}


@settings(max_examples=200, deadline=None)
@given(MODEL_TEXT)
@example('{"name": "set_timer", "arguments": "{\\"minutes\\": ' + "[" * 990 + '"}')
def test_structured_rewards_score_any_completion_in_unit_range(text):
    timer = tool_call(text, tools=TOOLS, answer={"name": "set_timer", "arguments": {"minutes": 5}})
    shaped = json_structure(text, schema=SCHEMA, answer={"name": "a", "n": 1})
    for out in (timer, shaped):
        total = out["total"] if isinstance(out, dict) else out
        assert 0.0 <= total <= 1.0
