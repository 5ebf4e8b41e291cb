"""Row fields a reward reads that no row has: a warning, and the `data.field_map` that fixes it.

A reward whose input is absent does not fail: `json_structure` without a
`schema` leaves its `schema` part out, `tool_call` without an `answer` leaves
`values` out, `accuracy` returns None. That is right for a row that has no
reference, and silent degradation when the data calls its reference `gold`.
So before scoring, `rlft reward check` prints, and `rlft train` logs, one
warning per field that a reward declares (`@reward(..., reads=...)`) and no row
has (None counts as absent), naming the rewards, the columns the rows do have,
and a `data.field_map` that renames a likely column: a known synonym
(`gold` -> `answer`, `json_schema` -> `schema`, `functions` -> `tools`, ...),
a column with such a word in its name (`reference_call` -> `answer`), or a
close spelling; else the generic form `{<column>: answer}`.

Torch-free, like every module of rlft.rewards.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlft.rewards.base import RewardTerm, declared_reads, resolve, term_labels

RLFT_FIELDS = ("prompt", "answer", "schema", "tools", "demonstration")
SYNONYMS: dict[str, tuple[str, ...]] = {
    "answer": ("gold", "gold_answer", "ground_truth", "reference", "ref", "target", "label",
               "solution", "expected", "expected_output", "final_answer", "output", "result",
               "call", "calls"),
    "schema": ("json_schema", "jsonschema", "output_schema", "response_schema"),
    "tools": ("functions", "function", "tool_specs", "available_tools", "apis", "api"),
    "demonstration": ("completion", "response", "chosen", "demo", "assistant", "rationale"),
}
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def missing_field_warnings(reads: Mapping[str, Sequence[Sequence[str]]],
                           rows: Iterable[Mapping[str, Any]],
                           field_map: Mapping[str, str] | None = None) -> list[str]:
    """One warning per declared field that no row has (see the module docstring).

    `reads` maps a reward's label to the fields it reads, as groups of
    alternatives (`declared_reads`); `rows` are the rows' fields as rewards get
    them (renamed, prompt left out); `field_map` is the one in use.

    >>> rows = [{"gold": '{"city": "Oslo"}', "json_schema": {"required": ["city"]}, "id": 1}]
    >>> for w in missing_field_warnings({"json_structure": [["answer"], ["schema"]]}, rows,
    ...                                 {"question": "prompt"}):
    ...     print(w)  # doctest: +NORMALIZE_WHITESPACE
    reward 'json_structure' reads row field 'answer', which no row has, so it scores
     without it. The rows' columns: gold, json_schema, id. Rename the column that holds
     it: data.field_map={question: prompt, gold: answer, json_schema: schema}
    reward 'json_structure' reads row field 'schema', which no row has, so it scores
     without it. The rows' columns: gold, json_schema, id. Rename the column that holds
     it: data.field_map={question: prompt, gold: answer, json_schema: schema}
    >>> missing_field_warnings({"accuracy": [["answer"]]}, [{"answer": "4"}, {"answer": None}])
    []
    """
    columns = _columns(rows)
    by_group: dict[tuple[str, ...], list[str]] = {}
    for label, groups in reads.items():
        for group in groups:
            if not any(f in columns for f in group):
                by_group.setdefault(tuple(group), []).append(label)
    if not by_group:
        return []
    fixes = _guesses(list(by_group), columns, field_map or {})
    out = []
    for group, labels in by_group.items():
        who = ("rewards " if len(labels) > 1 else "reward ") + ", ".join(map(repr, labels))
        what = " (or ".join(repr(f) for f in group) + ")" * (len(group) - 1)
        have = f"The rows' columns: {', '.join(columns)}." if columns \
            else "The rows have no column besides the prompt."
        fix = {**(field_map or {}), **fixes}
        if group[0] not in fix.values():
            fix["<column>"] = group[0]
        out.append(f"{who} {'read' if len(labels) > 1 else 'reads'} row field {what}, which no "
                   f"row has, so {'they score' if len(labels) > 1 else 'it scores'} without it. "
                   f"{have} Rename the column that holds it: data.field_map={_flow(fix)}")
    return out


def field_warnings(terms: Sequence[RewardTerm], rows: Iterable[Mapping[str, Any]],
                   field_map: Mapping[str, str] | None = None) -> list[str]:
    """`missing_field_warnings` for configured terms; a field the term's kwargs supply
    (kwargs win over row fields) is not missing."""
    reads = {}
    for label, term in zip(term_labels(list(terms)), terms):
        groups = declared_reads(resolve(term.name), term.kwargs)
        reads[label] = [g for g in groups if not any(f in term.kwargs for f in g)]
    return missing_field_warnings(reads, rows, field_map)


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Column names with a value in at least one row, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update((k, None) for k, v in row.items() if v is not None and k not in seen)
    return list(seen)


def _guesses(groups: list[tuple[str, ...]], columns: list[str],
             field_map: Mapping[str, str]) -> dict[str, str]:
    """column -> field for each missing field whose column can be guessed."""
    free = [c for c in columns if c not in RLFT_FIELDS and c not in field_map.values()]
    out: dict[str, str] = {}
    for group in groups:
        for field in group:
            column = guess_column(field, [c for c in free if c not in out])
            if column is not None:
                out[column] = field
                break
    return out


def guess_column(field: str, columns: Sequence[str]) -> str | None:
    """The column most likely to hold `field`, or None.

    >>> guess_column("answer", ["id", "reference_call", "tools"])
    'reference_call'
    >>> guess_column("schema", ["question", "json_schema"]), guess_column("tools", ["id"])
    ('json_schema', None)
    """
    words = (*SYNONYMS.get(field, ()), field)
    lowered = {c.lower(): c for c in columns}
    for word in words:  # a known synonym, exactly
        if word in lowered:
            return lowered[word]
    for c in columns:  # a known word inside the name: reference_call, gold_json
        if set(re.split(r"[^a-z0-9]+", c.lower())) & set(words):
            return c
    close = difflib.get_close_matches(field, columns, n=1, cutoff=0.75)
    return close[0] if close else None


def _flow(mapping: Mapping[str, str]) -> str:
    """A YAML flow mapping for an override: {a: b, "odd name": c}."""
    def name(s: str) -> str:
        return s if _PLAIN_NAME.fullmatch(s) or s == "<column>" else json.dumps(s)

    return "{" + ", ".join(f"{name(k)}: {name(v)}" for k, v in mapping.items()) + "}"
