"""Reading tool calls: the calls a completion makes, and the reference calls of a row.

Completions (`parse_calls`): `<tool_call>{...}</tool_call>` blocks
(Hermes/Qwen), or JSON anywhere in the text (code fences and prose tolerated)
holding a call `{"name": ..., "arguments": {...}}` (`arguments` may be a JSON
string; `parameters` is accepted for it), an OpenAI `{"function": {...}}` entry,
a `{"tool_calls": [...]}` message, or a list of any of these.

References (`references`, the row's `answer`): one call or a list of calls,
as objects or JSON text, in any of three forms:

1. plain: any call form above. Every argument is required, with that value.
2. rlft's explicit form: a plain call plus
   `"alternatives": {"arg": [v1, v2, ...]}`, further accepted values per
   argument (the value in `arguments`, when the call has one, stays accepted),
   and `"optional": ["arg", ...]`, arguments that may be left out (when given,
   the value must still be an accepted one).
3. the Gorilla / BFCL form `{"fn": {"arg": [v1, v2, ...], ...}}`: each argument
   maps to its list of accepted values, and `""` in that list means the
   argument may be left out. Inside an accepted value, a dict whose every value
   is a list is the same form for a dict-valued argument (it matches a dict
   whose keys it knows, each with an accepted value, the missing keys
   omissible). BFCL's `ground_truth` is a list of these, one per call.

A value matches an accepted one by `jsontext.same` (case and spacing in
strings, 3 == 3.0 == "3").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlft.rewards.jsontext import find_json, loads_or_none, same

MAX_DEPTH = 8
TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
CALL_KEYS = ("name", "function", "tool_calls")  # keys that make a dict a plain call


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
        return [c for block in tagged for c in calls_in(loads_or_none(block.strip()))]
    return calls_in(find_json(text)[0])


def calls_in(value: Any, depth: int = 0) -> list[Call]:
    """The calls in a decoded JSON value (a call, a list, an OpenAI entry or message)."""
    # Real calls nest 3 levels at most; deeper JSON ("[[[[...") must not exhaust the stack.
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, list):
        return [c for v in value for c in calls_in(v, depth + 1)]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("tool_calls"), list):
        return calls_in(value["tool_calls"], depth + 1)
    if isinstance(value.get("function"), dict):
        return calls_in(value["function"], depth + 1)
    name = value.get("name")
    if not isinstance(name, str):
        return []
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = loads_or_none(args)
    return [Call(name, args if isinstance(args, dict) else None)]


@dataclass(frozen=True)
class Accepted:
    """Accepted values per argument (of a call, or of a dict-valued argument), and
    the arguments that may be left out."""

    values: Mapping[str, tuple[Any, ...]]
    optional: frozenset[str] = frozenset()

    def score(self, got: Mapping[str, Any]) -> float:
        """Matched arguments over those given plus the required ones not given
        (so an extra argument costs, an omitted optional one does not).

        >>> unit = Accepted({"base": (10,), "unit": ("units", "cm")}, frozenset({"unit"}))
        >>> unit.score({"base": 10}), unit.score({"base": 10, "unit": "cm"})
        (1.0, 1.0)
        >>> unit.score({"base": 10, "unit": "m"}), unit.score({"unit": "cm"})
        (0.5, 0.5)
        """
        keys = set(got) | (set(self.values) - self.optional)
        if not keys:
            return 1.0
        hits = sum(k in got and any(matches(got[k], v) for v in self.values.get(k, ()))
                   for k in keys)
        return hits / len(keys)


@dataclass(frozen=True)
class Reference:
    """One reference call: its name and what its arguments may be."""

    name: str
    accepted: Accepted


def matches(pred: Any, accepted: Any) -> bool:
    """`pred` is the accepted value (an `Accepted` matches a dict in full)."""
    if isinstance(accepted, Accepted):
        return isinstance(pred, dict) and accepted.score(pred) == 1.0
    if isinstance(accepted, list):
        return isinstance(pred, list) and len(pred) == len(accepted) \
            and all(matches(p, a) for p, a in zip(pred, accepted))
    return same(pred, accepted)


def references(answer: Any) -> list[Reference] | None:
    """The reference calls in a row's `answer`; None without one (see the module docstring).

    >>> [r] = references({"calculate_triangle_area": {"base": [10], "height": [5],
    ...                                               "unit": ["units", ""]}})
    >>> r.name, dict(r.accepted.values), sorted(r.accepted.optional)
    ('calculate_triangle_area', {'base': (10,), 'height': (5,), 'unit': ('units',)}, ['unit'])
    >>> [r] = references({"name": "set_timer", "arguments": {"minutes": 5, "sound": "bell"},
    ...                   "alternatives": {"minutes": ["5 min"]}, "optional": ["sound"]})
    >>> dict(r.accepted.values), sorted(r.accepted.optional)
    ({'minutes': (5, '5 min'), 'sound': ('bell',)}, ['sound'])
    >>> [r.name for r in references('[{"f": {}}, {"name": "g", "arguments": {}}]')]
    ['f', 'g']
    """
    if answer is None:
        return None
    value = loads_or_none(answer.strip()) if isinstance(answer, str) else answer
    if isinstance(value, (dict, list)):
        refs = _refs(value, 0)
    elif isinstance(answer, str):  # call text, e.g. "<tool_call>{...}</tool_call>"
        refs = [_plain(c) for c in parse_calls(answer)]
    else:
        refs = []
    if not refs:
        raise ValueError(f"tool_call: row field 'answer' holds no tool call ({{'name', "
                         f"'arguments'}}, the BFCL form {{'fn': {{'arg': [accepted, ...]}}}}, "
                         f"or a list of them): {str(answer)[:80]!r}")
    return refs


def _refs(value: Any, depth: int) -> list[Reference]:
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v, depth + 1)]
    if _is_bfcl(value):
        [(name, args)] = value.items()
        return [Reference(name, _bfcl_accepted(args))]
    if isinstance(value, dict) and ("alternatives" in value or "optional" in value):
        return [_explicit(c, value) for c in calls_in(value)]
    return [_plain(c) for c in calls_in(value, depth)]


def _plain(call: Call) -> Reference:
    return Reference(call.name, Accepted({k: (v,) for k, v in (call.arguments or {}).items()}))


def _is_bfcl(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    [(name, args)] = value.items()
    return name not in CALL_KEYS and _all_lists(args)


def _all_lists(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, list) for v in value.values())


def _bfcl_accepted(args: Mapping[str, list]) -> Accepted:
    values = {k: tuple(_bfcl_value(v) for v in vs if v != "") for k, vs in args.items()}
    return Accepted(values, frozenset(k for k, vs in args.items() if "" in vs))


def _bfcl_value(value: Any) -> Any:
    """An accepted value; dicts of lists inside it are nested accepted values."""
    if _all_lists(value) and value:
        return _bfcl_accepted(value)
    if isinstance(value, list):
        return [_bfcl_value(v) for v in value]
    return value


def _explicit(call: Call, value: Mapping[str, Any]) -> Reference:
    alternatives, optional = value.get("alternatives", {}), value.get("optional", [])
    if not _all_lists(alternatives):
        raise ValueError(f"tool_call: row field 'answer': 'alternatives' must map argument "
                         f"names to lists of accepted values, e.g. {{\"unit\": [\"m\", "
                         f"\"meters\"]}}; got {str(alternatives)[:80]!r}")
    if not (isinstance(optional, list) and all(isinstance(k, str) for k in optional)):
        raise ValueError(f"tool_call: row field 'answer': 'optional' must be a list of "
                         f"argument names; got {str(optional)[:80]!r}")
    args = call.arguments or {}
    names = [*args, *(k for k in alternatives if k not in args)]
    values = {k: ((args[k],) if k in args else ()) + tuple(alternatives.get(k, ())) for k in names}
    return Reference(call.name, Accepted(values, frozenset(optional)))
