"""The tool registry, the `@tool` decorator, and JSON Schemas from type hints.

A tool is a plain function of keyword arguments that returns text (or
anything JSON can encode). Its schema, the one the model is shown in the
prompt, comes from the type hints and the docstring (first paragraph:
description; a Google-style `Args:` block: per-argument descriptions) unless
`@tool(schema=...)` gives one explicitly. Torch-free: the reward processes
that run tool calls import this module.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlft.registry import Registry

TOOLS: Registry[Callable[..., Any]] = Registry("tool", builtins="rlft.tools")
JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                              list: "array", tuple: "array", dict: "object"}


def tool(name: str | None = None, *, schema: Mapping[str, Any] | None = None) -> Callable:
    """Mark a function as a tool; with a `name`, register it as a built-in.

    `schema` (the OpenAI `{"name", "description", "parameters"}` function
    form) replaces the one read from the type hints and docstring.
    """
    def deco(fn: Callable) -> Callable:
        fn.rlft_tool_schema = dict(schema) if schema is not None else None
        return TOOLS.register(name)(fn) if name else fn

    return deco


@dataclass(frozen=True)
class ToolSpec:
    """One entry of `rollout.tools`: the name the model calls and its schema."""

    ref: str  # built-in name or import path (`tools.py:fn`), as configured
    name: str  # the name the model writes in a call
    schema: Mapping[str, Any] = field(default_factory=dict)  # OpenAI function form


def resolve_tool(ref: str) -> Callable[..., Any]:
    """A registered built-in or an import path (`tools.py:fn`, `pkg.mod:fn`)."""
    fn = TOOLS.get(ref)
    if not callable(fn):
        raise TypeError(f"tool {ref!r} resolves to a {type(fn).__name__}, not a function; "
                        f"rollout.tools lists functions")
    return fn


def load_tools(refs: list[str] | tuple[str, ...]) -> list[ToolSpec]:
    """Specs of the configured tools; two tools that the model would call by one name fail.

    >>> [s.name for s in load_tools(["calculator", "lookup"])]
    ['calculator', 'lookup']
    """
    specs = []
    for ref in refs:
        fn = resolve_tool(ref)
        schema = getattr(fn, "rlft_tool_schema", None) or schema_of(fn)
        if not isinstance(schema.get("name"), str) or not schema["name"]:
            raise ValueError(f"tool {ref!r}: its schema needs a non-empty 'name'")
        specs.append(ToolSpec(ref, schema["name"], schema))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"rollout.tools: more than one tool is called {twice}; rename one "
                         f"(a built-in's name or the function's name) or drop the duplicate")
    return specs


def schema_of(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAI function schema of `fn`, from its type hints and docstring;
    `skip`: parameters the model does not fill (a method's `self`).

    >>> def add(a: int, b: int = 0) -> int:
    ...     '''Add two numbers.
    ...
    ...     Args:
    ...         a: the first number
    ...     '''
    >>> s = schema_of(add)
    >>> s["description"], s["parameters"]["required"], s["parameters"]["properties"]["a"]
    ('Add two numbers.', ['a'], {'type': 'integer', 'description': 'the first number'})
    """
    hints = typing.get_type_hints(fn)
    doc = inspect.getdoc(fn) or ""
    described = _arg_docs(doc)
    props: dict[str, Any] = {}
    required = []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in skip:
            continue
        if pname not in hints:
            raise TypeError(f"tool {fn.__name__!r}: argument {pname!r} has no type hint; "
                            f"annotate it (int, float, str, bool, list[...], dict) or pass "
                            f"@tool(schema=...)")
        props[pname] = {**json_type(hints[pname], f"{fn.__name__}.{pname}"),
                        **({"description": described[pname]} if pname in described else {})}
        if p.default is p.empty:
            required.append(pname)
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    return {"name": fn.__name__, "description": summary,
            "parameters": {"type": "object", "properties": props, "required": required}}


def json_type(hint: Any, where: str) -> dict[str, Any]:
    """JSON Schema of one type hint (optional types drop `None`).

    >>> json_type(list[float], "x"), json_type(int | None, "y")
    ({'type': 'array', 'items': {'type': 'number'}}, {'type': 'integer'})
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        if len(kept) == 1:
            return json_type(kept[0], where)
        return {"anyOf": [json_type(a, where) for a in kept]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if hint in JSON_TYPES:
        return {"type": JSON_TYPES[hint]}
    if origin in (list, tuple) and args:
        return {"type": "array", "items": json_type(args[0], where)}
    if origin is dict:
        return {"type": "object"}
    if hint is Any:
        return {}
    raise TypeError(f"tool argument {where}: no JSON type for {hint!r}; use int, float, str, "
                    f"bool, list[...], dict or Literal[...], or pass @tool(schema=...)")


def _arg_docs(doc: str) -> dict[str, str]:
    """`name: description` lines of a Google-style `Args:` block."""
    block = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if not block:
        return {}
    out: dict[str, str] = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out
