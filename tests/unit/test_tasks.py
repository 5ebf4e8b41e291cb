"""Built-in tasks: deterministic, disjoint splits, and rows the rewards can score."""

import functools
import json
import random
import re

import jsonschema
import pytest

from rlft.data.tasks import SPLIT_SIZES, TASKS, draw, split_of, split_size
from rlft.data.tasks.arithmetic import problems
from rlft.data.tasks.tool_call import TOOLS
from rlft.registry import RegistryError

NAMES = ["arithmetic", "json_extract", "tool_call", "tool_use"]


@pytest.fixture(scope="module")
def rows() -> dict:
    return {(t, s): TASKS.get(t)(s) for t in NAMES for s in SPLIT_SIZES}


@functools.cache
def validator(schema_json: str) -> jsonschema.Draft202012Validator:
    # jsonschema.validate re-checks the schema on every call; 4,400 rows make that slow.
    schema = json.loads(schema_json)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def conforms(instance: object, schema: dict) -> bool:
    return validator(json.dumps(schema, sort_keys=True)).is_valid(instance)


def user_text(row: dict) -> str:
    p = row["prompt"]
    return p if isinstance(p, str) else next(m["content"] for m in p if m["role"] == "user")


def problem_key(task: str, row: dict) -> str:
    """What makes two rows the same problem, whatever the phrasing."""
    if task == "arithmetic":
        return row["demonstration"].split(" = ")[0]  # "12 + 7"
    if task == "tool_use":  # the call's arguments: "123 * 456", or "Velmora|founded"
        args = tool_use_call(row)["arguments"]
        return args.get("expression") or f"{args['entity']}|{args['attribute']}"
    return json.dumps(json.loads(row["answer"]), sort_keys=True)


def tool_use_call(row: dict) -> dict:
    first = json.loads(row["demonstration_turns"])[0]["content"]
    return json.loads(re.fullmatch(r"<tool_call>(.*)</tool_call>", first).group(1))


def test_tool_use_answers_are_what_the_tools_return(rows):
    from rlft.tools.call import call_tool

    tools = {"calculator": "calculator", "lookup": "lookup"}
    kinds = []
    for r in rows["tool_use", "eval"]:
        call = tool_use_call(r)
        kinds.append(call["name"])
        assert call_tool(call["name"], arguments=call["arguments"], tools=tools) == r["answer"]
        assert r["demonstration"].endswith(f"<|im_start|>assistant\n{r['answer']}")
        assert {t["function"]["name"] for t in r["tools"]} == set(tools)
    assert kinds.count("lookup") >= 60 and kinds.count("calculator") >= 60  # both kinds


def test_registry_names_and_miss():
    assert TASKS.names() == sorted([*NAMES, "bank"])  # bank: tests/unit/workers/test_episodes.py
    with pytest.raises(RegistryError, match="Did you mean 'arithmetic'.*Valid names: arithmetic"):
        TASKS.get("arithmetc")
    # data.source's help (rlft config, docs/config-reference.md) names every task
    from rlft.config import describe
    help_text = dict((p, h) for p, _, h in describe())["data.source"]
    assert all(name in help_text for name in TASKS.names()), help_text


@pytest.mark.parametrize("task", NAMES)
def test_deterministic_sized_and_disjoint(task, rows):
    train, ev = rows[task, "train"], rows[task, "eval"]
    assert TASKS.get(task)("train") == train  # a second call: same rows, same order
    assert (len(train), len(ev)) == (2000, 200)
    assert len({json.dumps(r["prompt"]) for r in train}) == len(train)  # no duplicate prompts
    train_keys = {problem_key(task, r) for r in train}
    eval_keys = {problem_key(task, r) for r in ev}
    assert not train_keys & eval_keys
    # Each problem sits in the split its hash names.
    assert {split_of(k) for k in eval_keys} == {"eval"}
    assert {split_of(k) for k in train_keys} == {"train"}


@pytest.mark.parametrize("task", NAMES)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_row_has_the_common_fields(task, split, rows):
    for r in rows[task, split]:
        assert isinstance(r["answer"], str) and r["answer"]
        assert isinstance(r["demonstration"], str) and r["demonstration"]
        assert user_text(r)


def test_split_size_names_the_valid_splits():
    with pytest.raises(ValueError, match="splits train, eval, not 'test'.*data.train_split"):
        split_size("arithmetic", "test")


def test_arithmetic_problem_pools_hand_counted():
    # + : a, b in 1..20 -> 20*20 = 400; - : a >= b -> 20 (a == b) + 190 (a > b) = 210;
    # * : a, b in 2..9 -> 8*8 = 64.
    assert [len(problems(op)) for op in "+-*"] == [400, 210, 64]


def test_arithmetic_answers_match_a_loop_reference(rows):
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    words = {"plus": "+", "minus": "-", "times": "*"}
    for r in rows["arithmetic", "train"] + rows["arithmetic", "eval"]:
        q = user_text(r)
        for word, sym in words.items():
            q = q.replace(f" {word} ", f" {sym} ")
        a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", q).groups()
        expected = ops[op](int(a), int(b))
        assert r["answer"] == str(expected) and expected >= 0
        assert r["demonstration"] == f"{a} {op} {b} = {expected}"
        assert r["prompt"][0] == {"role": "system", "content": "Answer with just the number."}


def test_arithmetic_demonstrations_verify_with_math_verify():
    # The `accuracy` reward scores with math-verify (last answer in the text);
    # a demonstration must score 1 against its own answer, and 0 against another.
    from math_verify import parse, verify

    for r in TASKS.get("arithmetic")("eval")[:10]:
        pred = parse(r["demonstration"], parsing_timeout=None)
        assert verify(parse(f"${r['answer']}$", parsing_timeout=None), pred, timeout_seconds=None)
        wrong = parse(f"${int(r['answer']) + 1}$", parsing_timeout=None)
        assert not verify(wrong, pred, timeout_seconds=None)


def test_arithmetic_keeps_operators_balanced(rows):
    ops = [r["demonstration"].split()[1] for r in rows["arithmetic", "train"]]
    # Round-robin until '*' (about 58 train problems x 4 phrasings) runs out.
    assert 200 <= ops.count("*") <= 240 and min(ops.count("+"), ops.count("-")) >= 700


def test_json_extract_answers_meet_their_schema_and_come_from_the_text(rows):
    kinds = set()
    for r in rows["json_extract", "train"] + rows["json_extract", "eval"]:
        answer = json.loads(r["answer"])
        assert conforms(answer, r["schema"])
        assert json.loads(r["demonstration"]) == answer
        assert set(r["schema"]["required"]) == set(answer)
        text = user_text(r)
        for key, value in answer.items():
            assert f'"{key}"' in text  # the prompt names every key
            if isinstance(value, str):
                assert value in text
        kinds.add(tuple(answer))
    assert len(kinds) == 3


def test_tool_call_answers_are_valid_calls_of_offered_tools(rows):
    used = set()
    for r in rows["tool_call", "train"] + rows["tool_call", "eval"]:
        assert r["tools"] == TOOLS
        call = json.loads(r["answer"])
        specs = {t["function"]["name"]: t["function"] for t in r["tools"]}
        assert set(call) == {"name", "arguments"} and call["name"] in specs
        assert conforms(call["arguments"], specs[call["name"]]["parameters"])
        assert r["demonstration"] == f"<tool_call>{r['answer']}</tool_call>"
        for value in call["arguments"].values():
            assert str(value) in r["prompt"]  # every argument can be read off the request
        used.add(call["name"])
    assert used == set(specs)


def test_rows_do_not_share_mutable_objects(rows):
    a, b = rows["tool_call", "eval"][:2]
    assert a["tools"] is not b["tools"]
    a, b = rows["json_extract", "eval"][:2]
    assert a["schema"] is not b["schema"]


def test_draw_is_round_robin_then_fills_from_big_pools():
    # Pools of 2 and 4, n=5: round 1 takes one of each, round 2 one of each,
    # then the small pool is empty and the big one gives the fifth: 2 + 3.
    out = draw([["a1", "a2"], ["b1", "b2", "b3", "b4"]], 5, random.Random(0), "t")
    assert sorted(x[0] for x in out) == ["a", "a", "b", "b", "b"] and len(set(out)) == 5
    # n=2 stops after one round: one from each pool.
    assert sorted(x[0] for x in draw([["a1", "a2"], ["b1", "b2"]], 2, random.Random(0), "t")) \
        == ["a", "b"]
    with pytest.raises(RuntimeError, match="only 3 distinct problems.*needs 4"):
        draw([["a"], ["b", "c"]], 4, random.Random(0), "t")
