"""Rows -> rendered, tokenised prompts (`Prompt`), with the row's fields.

Decisions:
- `schema` and `tools` may be objects or JSON strings (parquet and the
  built-in loader store them as strings, since Arrow cannot hold objects of
  differing shapes in one column); `Prompt.fields` always holds them parsed.
  `answer` stays as the dataset has it (a JSON string for the JSON tasks).
- The prompt is rendered with the tokenizer's chat template when it has one
  and then tokenised without special tokens: the template writes the BOS
  itself when the model wants one, so adding it again would duplicate it.
  Without a template the messages' text is joined and the tokenizer's usual
  special tokens (its BOS, if any) are added.
- `data.system_prompt` replaces the row's own system message, or is put
  first when the row has none.
- Rows with `tools`: templates that render tools (they mention `tools`) get
  them through `apply_chat_template(tools=...)`; for others (SmolLM2's) a
  compact tool list and the `<tool_call>` reply format go into the system
  message, so the model always sees the tools it is scored on.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlft.types import Prompt

JSON_FIELDS = ("schema", "tools", "env_args", "reference_calls")  # objects of differing shapes
BAD_ROW_CHOICES = ("error", "skip")


@dataclass(frozen=True)
class PromptSet:
    """Rendered prompts of one source and split, and what was left out."""

    prompts: tuple[Prompt, ...]
    skipped: int = 0
    skipped_reasons: Mapping[str, int] = field(default_factory=dict)  # reason -> rows


class BadRow(ValueError):
    """A malformed row; `reason` is the short key counted when rows are skipped."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """A compact tool list for templates that cannot render tools themselves.

    >>> print(render_tools([{"type": "function", "function": {"name": "set_timer",
    ...     "description": "Start a timer.", "parameters": {"type": "object",
    ...     "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}}]))
    You can call these tools:
    - set_timer(minutes: integer): Start a timer.
    To call a tool, reply with <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.
    """
    lines = ["You can call these tools:"]
    for spec in tools:
        fn = spec.get("function", spec)  # accept bare {"name", "parameters"} specs too
        params = fn.get("parameters") or {}
        required = set(params.get("required", ()))
        args = []
        for name, prop in (params.get("properties") or {}).items():
            kind = " | ".join(json.dumps(v) for v in prop["enum"]) if "enum" in prop \
                else prop.get("type", "any")
            args.append(f"{name}{'' if name in required else '?'}: {kind}")
        desc = f": {fn['description']}" if fn.get("description") else ""
        lines.append(f"- {fn['name']}({', '.join(args)}){desc}")
    lines.append('To call a tool, reply with <tool_call>{"name": "<tool>", "arguments": {...}}'
                 "</tool_call>.")
    return "\n".join(lines)


def _messages(prompt: Any, prompt_field: str, i: int) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in prompt):
        return [dict(m) for m in prompt]
    raise BadRow("prompt not text or messages",
                 f"row {i}: field {prompt_field!r} must be a string or a non-empty list of "
                 f"{{role, content}} messages, got {type(prompt).__name__} {str(prompt)[:80]!r}; "
                 f"point data.prompt_field (or data.field_map) at the prompt column, or set "
                 f"data.on_bad_row=skip")


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if not system:
        return messages
    if messages[0]["role"] == "system":
        return [{**messages[0], "content": system}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _renders_tools(tokenizer: Any) -> bool:
    # Tool-aware templates (Qwen, Llama 3.1, Hermes) all read a `tools` variable.
    return _has_template(tokenizer) and "tools" in str(tokenizer.chat_template)


def encode_prompt_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, with BOS exactly as the model expects
    (see "Decisions" above: the template owns special tokens when there is one)."""
    return tokenizer(text, add_special_tokens=not _has_template(tokenizer))["input_ids"]


def render_prompt(messages: list[dict], tokenizer: Any, tools: list | None = None) -> str:
    """The text the policy continues: chat template (with generation prompt) or plain."""
    if _has_template(tokenizer):
        if tools and _renders_tools(tokenizer):
            return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                 tokenize=False)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages) + "\n"


def _fields(row: Mapping[str, Any], prompt_field: str, i: int) -> dict:
    out = {}
    for k, v in row.items():
        if k == prompt_field:
            continue
        if k in JSON_FIELDS and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise BadRow(f"bad JSON in {k}",
                             f"row {i}: field {k!r} is a string but not valid JSON ({exc}); "
                             f"fix the data or set data.on_bad_row=skip") from exc
        out[k] = v
    return out


def _tools_system(tools: Any, tokenizer: Any, i: int) -> str | None:
    """System text listing `tools`, or None when the template renders them itself."""
    if not tools or _renders_tools(tokenizer):
        return None
    try:
        return render_tools(tools)
    except (AttributeError, KeyError, TypeError) as exc:
        raise BadRow("bad tools", f"row {i}: field 'tools' must be a list of function specs "
                     f"{{type: function, function: {{name, description, parameters}}}} "
                     f"({type(exc).__name__}: {exc}); fix the data or set "
                     f"data.on_bad_row=skip") from exc


@dataclass(frozen=True)
class _Render:
    """build_prompts' options, passed as one value."""

    prompt_field: str
    system_prompt: str | None
    max_prompt_tokens: int


def _render_row(row: Mapping[str, Any], tokenizer: Any, opt: _Render,
                i: int) -> tuple[str, tuple[int, ...], dict]:
    """One row's (text, prompt_ids, fields); raises BadRow."""
    if row.get(opt.prompt_field) is None:
        raise BadRow("missing prompt",
                     f"row {i}: no {opt.prompt_field!r} field (columns: {', '.join(row)}); set "
                     f"data.prompt_field to the prompt column, rename a column with "
                     f"data.field_map (e.g. {{question: prompt}}), or set data.on_bad_row=skip")
    messages = _messages(row[opt.prompt_field], opt.prompt_field, i)
    fields = _fields(row, opt.prompt_field, i)
    tools_text = _tools_system(fields.get("tools"), tokenizer, i)
    system = opt.system_prompt
    if tools_text:  # the tool list goes after whichever system message applies
        own = system or (messages[0]["content"] if messages[0]["role"] == "system" else "")
        system = f"{own}\n\n{tools_text}" if own else tools_text
    messages = _with_system(messages, system)
    text = render_prompt(messages, tokenizer, fields.get("tools"))
    if tokenizer is None:  # rlft reward check: the rows' fields, no model to count tokens for
        return text, (), fields
    ids = encode_prompt_text(tokenizer, text)
    if len(ids) > opt.max_prompt_tokens:
        raise BadRow("prompt too long",
                     f"row {i}: field {opt.prompt_field!r} renders to {len(ids)} tokens, over "
                     f"data.max_prompt_tokens={opt.max_prompt_tokens}; raise "
                     f"data.max_prompt_tokens or set data.on_bad_row=skip to drop such rows")
    return text, tuple(ids), fields


def _rename(row: Mapping[str, Any], field_map: Mapping[str, str], i: int) -> dict:
    out: dict[str, Any] = {}
    for k, v in row.items():
        name = field_map.get(k, k)
        if name in out:
            raise ValueError(f"row {i}: data.field_map gives two columns the name {name!r}; "
                             f"map only one of them to it")
        out[name] = v
    return out


def build_prompts(rows: Iterable[Mapping[str, Any]], tokenizer: Any, *,
                  prompt_field: str = "prompt", field_map: Mapping[str, str] | None = None,
                  system_prompt: str | None = None, max_prompt_tokens: int = 512,
                  on_bad_row: str = "error", source_name: str = "") -> PromptSet:
    """Rename columns, render each row's prompt and tokenise it.

    `rows` is a `datasets.Dataset` or any iterable of mappings. Malformed rows
    (no prompt, a prompt that is neither text nor messages, a prompt longer
    than `max_prompt_tokens`, unparsable `schema`/`tools`) raise a ValueError
    naming the row, the field and the fix, or with `on_bad_row="skip"` are
    counted by reason in the result. Uids are `<source_name>#<row number>`.
    With `tokenizer=None` (`rlft reward check`, which loads no model) the
    prompt text is the messages joined, with no token ids and no length check.
    """
    name = source_name or "data"
    if on_bad_row not in BAD_ROW_CHOICES:
        raise ValueError(f"data.on_bad_row={on_bad_row!r}; choices: {', '.join(BAD_ROW_CHOICES)}")
    field_map = dict(field_map or {})
    columns = getattr(rows, "column_names", None)
    absent = [k for k in field_map if columns is not None and k not in columns]
    if absent:
        raise ValueError(f"{name}: data.field_map renames {absent}, which are not columns; the "
                         f"columns are {columns}")
    opt = _Render(prompt_field, system_prompt, max_prompt_tokens)
    prompts: list[Prompt] = []
    reasons: Counter[str] = Counter()
    for i, raw in enumerate(rows):
        try:
            text, ids, fields = _render_row(_rename(raw, field_map, i), tokenizer, opt, i)
        except BadRow as exc:
            if on_bad_row == "error":
                raise BadRow(exc.reason, f"{name}: {exc}") from exc
            reasons[exc.reason] += 1
            continue
        prompts.append(Prompt(uid=f"{name}#{i}", text=text, prompt_ids=ids, fields=fields))
    if not reasons and not prompts:
        raise ValueError(f"{name}: the dataset has no rows; point data.source at data with rows")
    if not prompts:
        raise ValueError(f"{name}: every row was skipped as malformed ({dict(reasons)}); set "
                         f"data.on_bad_row=error to see the first bad row and its fix")
    return PromptSet(tuple(prompts), sum(reasons.values()), dict(reasons))
