"""`tool_call`: did the completion call the right tool with the right arguments?

Calls are read in the common formats (`<tool_call>` blocks, JSON calls,
OpenAI entries and messages; see `rlft.rewards.tool_parse`).

Tools (`tools`) are OpenAI function specs `{"type": "function", "function":
{"name", "description", "parameters"}}` or bare `{"name", "parameters"}`. The
parameters are JSON Schema, or the Gorilla / BFCL dialect with Python type
names (`dict`, `float`, `tuple`, `any`, ...), mapped to JSON Schema
(`rlft.rewards.tool_schema`). The reference (`answer`) is one call or a list,
as objects or JSON text: a plain call (every argument required, that value),
rlft's explicit form with `alternatives` and `optional` arguments, or the BFCL
form `{"fn": {"arg": [accepted, ...]}}` where `""` marks an argument that may
be left out (`rlft.rewards.tool_parse`). Reference calls are paired with
predicted calls by name first, then in order.

Parts (each in [0, 1], averaged over max(#predicted, #reference) calls, logged
as `tool_call/<part>`): `parsed` (any call found), `name` (names the reference
call; without a reference: names a tool in `tools`), `arg_names` (only declared
arguments, all required ones present), `arg_types` (arguments validate against
the tool's parameter schema), `values` (argument values accepted by the
reference, over the predicted arguments plus the reference's required ones, so
extra arguments cost and omitted optional ones do not). `total` is the
weighted mean of the parts that have their inputs.

Error categories (`err_unparsed`, `err_name`, `err_missing_args`,
`err_extra_args`, `err_types`, `err_values`: the fraction of calls making
each mistake, `rlft.rewards.tool_errors`) are logged beside the parts; they do
not enter `total`.

Multi-turn rollouts (`rollout.tools`): the calls of every model turn of the
`conversation` are scored together (the completion is only the final answer),
and `turns_with_calls` counts the turns that called a tool. When the row's
`answer` is the final answer rather than a call (`builtin:tool_use`), pass
`answer_is_call: false` and the calls are checked against `tools` only.
With `per_turn: true` the `answer` is a list with one entry per calling turn
(a call, or a list of calls made together): the model's i-th turn that calls
tools is scored against entry i only, so a right call in the wrong turn, a
missing turn or an extra one costs, where the pooled default would pair calls
by name across the whole conversation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlft.rewards.base import reward
from rlft.rewards.jsontext import as_json, conforms
from rlft.rewards.tool_errors import error_parts
from rlft.rewards.tool_parse import TAGGED, Call, Reference, parse_calls, references
from rlft.rewards.tool_schema import to_json_schema

__all__ = ["Call", "parse_calls", "tool_call"]
DIALECT = ("dict", "float", "tuple", "any", "list", "int", "bool", "str")
WEIGHTS = {"parsed": 1.0, "name": 2.0, "arg_names": 1.0, "arg_types": 1.0, "values": 2.0}


def _specs(tools: Any) -> dict[str, dict]:
    """name -> parameter schema, from OpenAI-style or bare function specs."""
    specs = {}
    for spec in as_json(tools, "tools", "tool_call") or []:
        fn = spec.get("function", spec) if isinstance(spec, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tool_call: row field 'tools' has an entry that is not a function "
                             f"spec ({{'name', 'parameters'}}): {str(spec)[:80]!r}")
        specs[fn["name"]] = to_json_schema(fn.get("parameters")) or {"type": "object",
                                                                      "properties": {}}
    return specs


@reward("tool_call", reads=("answer", "tools"))
def tool_call(completion: str, *, tools: Any = None, answer: Any = None,
              weights: Mapping[str, float] | None = None, conversation: Any = None,
              answer_is_call: bool = True, per_turn: bool = False,
              **fields: Any) -> dict[str, float]:
    """Part scores and their weighted mean (`total`); see the module docstring.

    >>> tools = [{"type": "function", "function": {"name": "set_timer", "parameters": {
    ...     "type": "object", "properties": {"minutes": {"type": "integer"}},
    ...     "required": ["minutes"]}}}]
    >>> ref = {"name": "set_timer", "arguments": {"minutes": 5}}
    >>> tool_call('<tool_call>{"name": "set_timer", "arguments": {"minutes": 5}}</tool_call>',
    ...           tools=tools, answer=ref)["total"]
    1.0
    >>> r = tool_call('{"name": "set_timer", "arguments": {"minutes": "5", "sound": "bell"}}',
    ...               tools=tools, answer=ref)
    >>> r["name"], r["arg_names"], r["arg_types"], r["values"]  # extra arg; "5" is no integer
    (1.0, 0.0, 0.0, 0.5)
    >>> tool_call("I cannot help with that.", tools=tools, answer=ref)["total"]
    0.0

    BFCL data: Python type names, a reference with an omissible argument (`""`):

    >>> area = [{"name": "area", "parameters": {"type": "dict", "properties": {
    ...     "base": {"type": "float"}, "unit": {"type": "string"}}, "required": ["base"]}}]
    >>> tool_call('{"name": "area", "arguments": {"base": 10}}', tools=area,
    ...           answer=[{"area": {"base": [10], "unit": ["units", ""]}}])["total"]
    1.0

    Per turn: the reference asks for `a` then `b`; this conversation called
    them the other way round (the pooled default would give full credit).

    >>> chat = [{"role": "assistant", "content": '<tool_call>{"name": "b", "arguments": {}}'
    ...          '</tool_call>'}, {"role": "tool", "content": "1"},
    ...         {"role": "assistant", "content": '<tool_call>{"name": "a", "arguments": {}}'
    ...          '</tool_call>'}, {"role": "tool", "content": "2"},
    ...         {"role": "assistant", "content": "done"}]
    >>> ref = [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]
    >>> tool_call("done", conversation=chat, answer=ref)["name"]
    1.0
    >>> tool_call("done", conversation=chat, answer=ref, per_turn=True)["name"]
    0.0
    """
    w = {**WEIGHTS, **(weights or {})}
    if set(w) - set(WEIGHTS):
        raise ValueError(f"tool_call: unknown weights {sorted(set(w) - set(WEIGHTS))}; "
                         f"parts are {', '.join(WEIGHTS)}")
    specs = _specs(tools) if tools is not None else None
    turns = [completion] if conversation is None else \
        [m.get("content") or "" for m in conversation if m.get("role") == "assistant"]
    turn_calls = [parse_calls(t) for t in turns]
    calls = [c for cs in turn_calls for c in cs]
    parts = {"parsed": float(bool(calls))}
    if per_turn and answer_is_call:
        refs, pairs = _pair_turns([cs for cs in turn_calls if cs], answer)
    else:
        refs = references(answer) if answer_is_call else None
        pairs = _pair(calls, refs) if calls or refs else []
    if pairs:
        parts.update(_part_scores(pairs, specs, refs is not None))
    total = sum(w[k] * v for k, v in parts.items()) / sum(w[k] for k in parts)
    unreadable = sum(1 for t, cs in zip(turns, turn_calls) if not cs and TAGGED.search(t))
    extra = {} if conversation is None else {
        "turns_with_calls": float(sum(map(bool, turn_calls)))}
    return {"total": total if calls else 0.0, **parts, **extra,
            **error_parts(pairs, specs, refs is not None, unreadable)}


def _pair(calls: list[Call], refs: list[Reference] | None
          ) -> list[tuple[Call | None, Reference | None]]:
    """(predicted, reference) pairs: same names first, the rest in order."""
    if refs is None:
        return [(c, None) for c in calls]
    free = list(calls)
    pairs: list[tuple[Call | None, Reference | None]] = []
    unmatched = []
    for r in refs:
        hit = next((c for c in free if c.name == r.name), None)
        if hit is None:
            unmatched.append(r)
        else:
            free.remove(hit)
            pairs.append((hit, r))
    for i in range(max(len(free), len(unmatched))):
        pairs.append((free[i] if i < len(free) else None,
                      unmatched[i] if i < len(unmatched) else None))
    return pairs


def _pair_turns(turns: list[list[Call]], answer: Any
                ) -> tuple[list[Reference], list[tuple[Call | None, Reference | None]]]:
    """Per-turn pairing: the i-th calling turn against the i-th reference entry."""
    entries = as_json(answer, "answer", "tool_call")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"tool_call(per_turn=True): row field 'answer' must be a list with "
                         f"one reference per calling turn; got {str(answer)[:80]!r}")
    per_ref = [references(e) or [] for e in entries]
    pairs: list[tuple[Call | None, Reference | None]] = []
    for i in range(max(len(turns), len(per_ref))):
        pairs += _pair(turns[i] if i < len(turns) else [], per_ref[i] if i < len(per_ref) else [])
    return [r for rs in per_ref for r in rs], pairs


def _part_scores(pairs: list, specs: dict[str, dict] | None, has_ref: bool) -> dict[str, float]:
    sums = {"name": 0.0, "arg_names": 0.0, "arg_types": 0.0, "values": 0.0}
    for call, ref in pairs:
        if has_ref:
            named = call is not None and ref is not None and call.name == ref.name
            sums["name"] += named
            sums["values"] += _values(call, ref) if named else 0.0
        elif specs is not None:
            sums["name"] += call.name in specs
        if specs is not None and call is not None and call.name in specs:
            names_ok, types_ok = _check_args(call, specs[call.name])
            sums["arg_names"] += names_ok
            sums["arg_types"] += types_ok
    keep = {"name", "values"} if has_ref else set()
    if specs is not None:
        keep |= {"name", "arg_names", "arg_types"}
    return {k: v / len(pairs) for k, v in sums.items() if k in keep}


def _check_args(call: Call, schema: dict) -> tuple[bool, bool]:
    if call.arguments is None:
        return False, False
    declared = set(schema.get("properties", {}))
    required = set(schema.get("required", []))
    names_ok = set(call.arguments) <= declared and required <= set(call.arguments)
    return names_ok, conforms(call.arguments, schema, f"tool_call: the parameters of tool "
                              f"{call.name!r} in row field 'tools' are not a valid JSON Schema "
                              f"(types: JSON Schema's, or {', '.join(DIALECT)}, ... as in BFCL "
                              f"data; see rlft.rewards.tool_schema)")


def _values(call: Call, ref: Reference) -> float:
    return ref.accepted.score(call.arguments or {})
