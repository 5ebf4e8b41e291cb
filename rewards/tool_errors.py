"""Tool-call error categories (after TL-Training): which mistake a call makes.

Each predicted call is checked for the categories below, against the tool's
parameter schema (row field `tools`) and, when the row has one, the paired
reference call (`answer`). `tool_call` reports each category as the fraction
of calls (unreadable `<tool_call>` blocks included) that make it, as
`tool_call/err_<category>`, so a user sees which error the model still makes.
They are diagnostics: `total` does not use them.

- `unparsed`: a `<tool_call>` block with no readable call, or arguments that
  are not a JSON object
- `name`: a tool that does not exist (or not the reference's tool)
- `missing_args`: a required argument left out
- `extra_args`: an argument the tool (or the reference) does not have
- `types`: a given argument of the wrong JSON type
- `values`: the right tool with an argument value the reference does not accept
"""

from __future__ import annotations

from typing import Any

from rlft.rewards.jsontext import conforms
from rlft.rewards.tool_parse import Call, Reference, matches

CATEGORIES = ("unparsed", "name", "missing_args", "extra_args", "types", "values")


def call_errors(call: Call, ref: Reference | None, has_ref: bool,
                schema: dict | None) -> set[str]:
    """The categories one call falls in (`schema`: its tool's parameters, if known).

    >>> s = {"type": "object", "properties": {"minutes": {"type": "integer"}},
    ...      "required": ["minutes"]}
    >>> sorted(call_errors(Call("set_timer", {"minutes": "5", "sound": 1}), None, False, s))
    ['extra_args', 'types']
    >>> sorted(call_errors(Call("set_time", {}), None, False, None))
    ['name']
    """
    if call.arguments is None:
        return {"unparsed"}
    args, out = call.arguments, set()
    named = ref is not None and call.name == ref.name
    if (has_ref and not named) or (not has_ref and schema is None):
        out.add("name")
    mistyped: set[str] = set()  # a wrong type is that error only, not also a wrong value
    if schema is not None:
        props = schema.get("properties", {})
        if set(schema.get("required", ())) - set(args):
            out.add("missing_args")
        if set(args) - set(props):
            out.add("extra_args")
        mistyped = {k for k, v in args.items() if k in props
                    and not conforms(v, props[k], f"tool {call.name!r}: bad parameter schema")}
        if mistyped:
            out.add("types")
    if named:
        accepted = ref.accepted
        if set(accepted.values) - accepted.optional - set(args):
            out.add("missing_args")
        if set(args) - set(accepted.values):
            out.add("extra_args")
        if any(k in accepted.values and k not in mistyped
               and not any(matches(v, a) for a in accepted.values[k]) for k, v in args.items()):
            out.add("values")
    return out


def error_parts(pairs: list[tuple[Call | None, Reference | None]], specs: dict | None,
                has_ref: bool, unreadable: int) -> dict[str, float]:
    """`err_<category>`: the fraction of calls (and unreadable blocks) in each category."""
    found = [call_errors(c, r, has_ref, specs.get(c.name) if specs is not None else None)
             if specs is not None or has_ref else ({"unparsed"} if c.arguments is None else set())
             for c, r in pairs if c is not None]
    n = len(found) + unreadable
    if n == 0:
        return {}
    counts: dict[str, Any] = {k: sum(k in f for f in found) for k in CATEGORIES}
    counts["unparsed"] += unreadable
    return {f"err_{k}": v / n for k, v in counts.items()}
