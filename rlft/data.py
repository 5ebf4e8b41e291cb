"""Datasets -> rendered prompts -> seeded, resumable batches.

Sources: `builtin:<task>` (rlft/tasks), a local .jsonl/.json/.parquet file, a
folder holding `<split>.jsonl|.json|.parquet`, or a hub dataset name. Rows keep
every column; `schema` and `tools` may be JSON strings or objects (Arrow
stores them as strings, and rewards get them parsed).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from rlft.types import Prompt

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
JSON_FIELDS = ("schema", "tools")


def load_rows(source: str, split: str) -> datasets.Dataset:
    if source.startswith("builtin:"):
        from rlft.tasks import TASKS

        rows = TASKS.get(source.removeprefix("builtin:"))(split)
        ds = datasets.Dataset.from_list([
            {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in r.items()} for r in rows])
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            found = [path / f"{split}{ext}" for ext in FORMATS if (path / f"{split}{ext}").is_file()]
            if not found:
                raise FileNotFoundError(f"data.source={source!r}: folder has no {split}.jsonl, "
                                        f"{split}.json or {split}.parquet")
            path = found[0]
        if path.is_file():
            fmt = FORMATS.get(path.suffix)
            if fmt is None:
                raise ValueError(f"data.source={source!r}: unsupported file type {path.suffix!r}; "
                                 f"use one of {', '.join(FORMATS)}")
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
        elif source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS:
            raise FileNotFoundError(f"data.source={source!r}: no such file or folder")
        else:
            ds = datasets.load_dataset(source, split=split)
    if len(ds) == 0:
        raise ValueError(f"data.source={source!r} split {split!r} is empty")
    return ds


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    skipped: int = 0
    skipped_reasons: Mapping[str, int] = field(default_factory=dict)


class BadRow(ValueError):
    pass


def _render(row: dict, tokenizer: Any, prompt_field: str, system_prompt: str | None,
            max_tokens: int, i: int) -> tuple[str, list[int]]:
    if prompt_field not in row or row[prompt_field] is None:
        raise BadRow(f"row {i}: no {prompt_field!r} field (columns: {', '.join(row)}); set "
                     f"data.prompt_field or map a column with data.field_map")
    prompt = row[prompt_field]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        messages = list(prompt)
    else:
        raise BadRow(f"row {i}: field {prompt_field!r} must be a string or a list of chat "
                     f"messages, got {type(prompt).__name__}")
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    # The template already holds any BOS; do not add special tokens twice.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_tokens:
        raise BadRow(f"row {i}: prompt has {len(ids)} tokens, over data.max_prompt_tokens="
                     f"{max_tokens}; raise it or set data.on_bad_row=skip")
    return text, ids


def _fields(row: dict, prompt_field: str) -> dict:
    out = {}
    for k, v in row.items():
        if k == prompt_field:
            continue
        if k in JSON_FIELDS and isinstance(v, str):
            v = json.loads(v)
        out[k] = v
    return out


def build_prompts(rows: Any, tokenizer: Any, *, prompt_field: str = "prompt",
                  field_map: Mapping[str, str] = {}, system_prompt: str | None = None,
                  max_prompt_tokens: int = 512, on_bad_row: str = "error",
                  source_name: str = "") -> PromptSet:
    prompts, reasons = [], Counter()
    for i, raw in enumerate(rows):
        row = {field_map.get(k, k): v for k, v in dict(raw).items()}
        try:
            text, ids = _render(row, tokenizer, prompt_field, system_prompt, max_prompt_tokens, i)
            fields = _fields(row, prompt_field)
        except (BadRow, json.JSONDecodeError) as exc:
            if on_bad_row == "error":
                raise BadRow(f"{source_name or 'data'}: {exc}") from exc
            reasons[str(exc).split(":", 1)[1].split(";")[0].strip()[:60]] += 1
            continue
        prompts.append(Prompt(uid=f"{source_name}#{i}", text=text, prompt_ids=tuple(ids),
                              fields=fields))
    if not prompts:
        raise ValueError(f"{source_name or 'data'}: every row was skipped as malformed "
                         f"({dict(reasons)})")
    return PromptSet(tuple(prompts), sum(reasons.values()), dict(reasons))


class PromptSampler:
    """Endless epochs of seeded shuffles; `state_dict` makes resume exact."""

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int,
                 shuffle: bool = True) -> None:
        self.prompts, self.batch_size, self.seed, self.shuffle = prompts, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[Prompt]:
        out = []
        while len(out) < self.batch_size:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._order_for(self.epoch)
            out.append(self.prompts[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._order_for(self.epoch)


def demonstration_ids(prompt: Prompt, tokenizer: Any) -> tuple[int, ...]:
    demo = prompt.demonstration
    if not demo:
        raise ValueError(f"row {prompt.uid} has no `demonstration`; this algorithm needs one "
                         f"per row (map a column to it with data.field_map)")
    ids = tokenizer(demo, add_special_tokens=False)["input_ids"]
    return tuple(ids) + (tokenizer.eos_token_id,)
