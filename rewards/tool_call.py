"""`tool_call`: did the completion call the right tool with the right arguments?

Calls are read in the common formats: `<tool_call>{...}</tool_call>` blocks
(Hermes/Qwen), or JSON anywhere in the text (code fences and prose tolerated)
holding a call `{"name": ..., "arguments": {...}}` (`arguments` may be a JSON
string; `parameters` is accepted for it), an OpenAI `{"function": {...}}` entry,
a `{"tool_calls": [...]}` message, or a list of any of these.

Tools (`tools`) are OpenAI function specs `{"type": "function", "function":
{"name", "description", "parameters"}}` or bare `{"name", "parameters"}`. The
reference (`answer`) is one call or a list, as objects or JSON text. Reference
calls are paired with predicted calls by name first, then in order.

Parts (each in [0, 1], averaged over max(#predicted, #reference) calls, logged
as `tool_call/<part>`): `parsed` (any call found), `name` (names the reference
call; without a reference: names a tool in `tools`), `arg_names` (only declared
arguments, all required ones present), `arg_types` (arguments validate against
the tool's parameter schema), `values` (reference argument values matched,
over the union of predicted and reference argument names, so extra arguments
cost). `total` is the weighted mean of the parts that have their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlft.rewards.base import reward
from rlft.rewards.jsontext import as_json, conforms, find_json, loads_or_none, same

WEIGHTS = {"parsed": 1.0, "name": 2.0, "arg_names": 1.0, "arg_types": 1.0, "values": 2.0}
MAX_DEPTH = 8
TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any] | None  # None: present but not a JSON object


def parse_calls(text: str) -> list[Call]:
    """Every tool call in `text` (see the module docstring for the formats).

    >>> parse_calls('<tool_call>{"name": "f", "arguments": "{\\\\"x\\\\": 1}"}</tool_call>')
    [Call(name='f', arguments={'x': 1})]
    >>> parse_calls('[{"name": "f", "arguments": {}}, {"name": "g", "parameters": {"y": 2}}]')
    [Call(name='f', arguments={}), Call(name='g', arguments={'y': 2})]
    """
    tagged = TAGGED.findall(text)
    if tagged:
        return [c for block in tagged for c in _calls(loads_or_none(block.strip()))]
    return _calls(find_json(text)[0])


def _calls(value: Any, depth: int = 0) -> list[Call]:
    # Real calls nest 3 levels at most; deeper JSON ("[[[[...") must not exhaust the stack.
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, list):
        return [c for v in value for c in _calls(v, depth + 1)]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("tool_calls"), list):
        return _calls(value["tool_calls"], depth + 1)
    if isinstance(value.get("function"), dict):
        return _calls(value["function"], depth + 1)
    name = value.get("name")
    if not isinstance(name, str):
        return []
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = loads_or_none(args)
    return [Call(name, args if isinstance(args, dict) else None)]


def _specs(tools: Any) -> dict[str, dict]:
    """name -> parameter schema, from OpenAI-style or bare function specs."""
    specs = {}
    for spec in as_json(tools, "tools", "tool_call") or []:
        fn = spec.get("function", spec) if isinstance(spec, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tool_call: row field 'tools' has an entry that is not a function "
                             f"spec ({{'name', 'parameters'}}): {str(spec)[:80]!r}")
        specs[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
    return specs


@reward("tool_call")
def tool_call(completion: str, *, tools: Any = None, answer: Any = None,
              weights: Mapping[str, float] | None = None, **fields: Any) -> dict[str, float]:
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
    """
    w = {**WEIGHTS, **(weights or {})}
    if set(w) - set(WEIGHTS):
        raise ValueError(f"tool_call: unknown weights {sorted(set(w) - set(WEIGHTS))}; "
                         f"parts are {', '.join(WEIGHTS)}")
    specs = _specs(tools) if tools is not None else None
    refs = _reference(answer)
    calls = parse_calls(completion)
    parts = {"parsed": float(bool(calls))}
    if calls or refs:
        pairs = _pair(calls, refs)
        parts.update(_part_scores(pairs, specs, refs is not None))
    total = sum(w[k] * v for k, v in parts.items()) / sum(w[k] for k in parts)
    return {"total": total if calls else 0.0, **parts}


def _reference(answer: Any) -> list[Call] | None:
    if answer is None:
        return None
    calls = parse_calls(answer) if isinstance(answer, str) else _calls(answer)
    if not calls:
        raise ValueError(f"tool_call: row field 'answer' holds no tool call "
                         f"({{'name', 'arguments'}} or a list of them): {str(answer)[:80]!r}")
    return calls


def _pair(calls: list[Call], refs: list[Call] | None) -> list[tuple[Call | None, Call | None]]:
    """(predicted, reference) pairs: same names first, the rest in order."""
    if refs is None:
        return [(c, None) for c in calls]
    free = list(calls)
    pairs: list[tuple[Call | None, Call | None]] = []
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
                              f"{call.name!r} in row field 'tools' are not a valid JSON Schema")


def _values(call: Call, ref: Call) -> float:
    got, want = call.arguments or {}, ref.arguments or {}
    keys = got.keys() | want.keys()
    if not keys:
        return 1.0
    return sum(k in got and k in want and same(got[k], want[k]) for k in keys) / len(keys)
