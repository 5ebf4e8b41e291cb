"""Where rows come from: `data.source` -> a `datasets.Dataset` of one split.

Sources, resolved in this order:
- `builtin:<task>`: a task generated in code (rlft/data/tasks: arithmetic,
  json_extract, tool_call), splits `train` and `eval`.
- `reasoning_gym:<task>[?size=N&eval_size=M&seed=S]`: a task of the optional
  reasoning-gym library (rlft/data/reasoning_gym.py), splits `train` and
  `eval`; score it with the `reasoning_gym` reward.
- a local file `.jsonl`, `.json` (an array of objects, or JSON lines) or
  `.parquet`: the whole file, whatever split is asked for. Give a folder to
  have separate splits.
- a local folder holding `<split>.jsonl`, `<split>.json` or
  `<split>.parquet` (first match in that order), e.g. `train.jsonl` +
  `eval.jsonl`.
- anything else is a hub dataset name for `datasets.load_dataset(name,
  split=split)`; offline this fails with a message saying so.

`schema` and `tools` are stored as JSON strings (Arrow cannot hold objects of
differing shapes in one column); `rlft.data.prompts` parses them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from rlft.data import reasoning_gym
from rlft.data.prompts import JSON_FIELDS
from rlft.registry import RegistryError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(source: str, split: str) -> datasets.Dataset:
    """The rows of one split of `source` (see the module docstring)."""
    if source.startswith("builtin:"):
        ds = _builtin(source, split)
    elif source.startswith(reasoning_gym.PREFIX):
        ds = datasets.Dataset.from_list(reasoning_gym.build_rows(source, split))
    else:
        path = _local_path(source, split)
        ds = _local_file(path, source) if path else _hub(source, split)
    if len(ds) == 0:
        raise ValueError(f"data.source={source!r}, split {split!r}: the dataset is empty; "
                         f"point data.source at data with rows")
    return ds


def check_source(source: str, split: str) -> None:
    """The errors `load_rows` would raise for a missing or unusable source, found
    without reading it: an unknown built-in or reasoning-gym task (or no
    reasoning-gym installed), a path that does not exist, a folder without the
    split's file, an empty or unsupported file. A hub dataset name is left to
    `load_rows`.

    >>> check_source("builtin:arithmetic", "train")
    >>> check_source("no/such/rows.jsonl", "train")
    Traceback (most recent call last):
    ...
    FileNotFoundError: data.source='no/such/rows.jsonl': no such file or folder; ...
    """
    if source.startswith("builtin:"):
        _task(source)
        return
    if source.startswith(reasoning_gym.PREFIX):
        reasoning_gym.check_task(source, split)
        return
    path = _local_path(source, split)
    if path is not None:
        _format(path, source)


def _local_path(source: str, split: str) -> Path | None:
    """The local file to read, or None for a hub dataset name."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _split_file(path, source, split)
    if path.is_file():
        return path
    if source.startswith((".", "/", "~")) or path.suffix in FORMATS:
        raise FileNotFoundError(f"data.source={source!r}: no such file or folder; check the "
                                f"path (relative paths start from {str(Path.cwd())!r})")
    return None


def _task(source: str):
    from rlft.data.tasks import TASKS

    try:
        return TASKS.get(source.removeprefix("builtin:"))
    except RegistryError as exc:
        raise ValueError(f"data.source={source!r}: {exc}") from exc


def _builtin(source: str, split: str) -> datasets.Dataset:
    rows = _task(source)(split)
    # JSON strings: Arrow would merge differing objects into one struct and
    # fill the keys a row lacks with nulls. build_prompts parses them back.
    return datasets.Dataset.from_list(
        [{k: json.dumps(v) if k in JSON_FIELDS else v for k, v in r.items()} for r in rows])


def _split_file(folder: Path, source: str, split: str) -> Path:
    for ext in FORMATS:
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    have = sorted(p.name for p in folder.iterdir() if p.suffix in FORMATS)
    raise FileNotFoundError(
        f"data.source={source!r}: the folder has no {split}.jsonl, {split}.json or "
        f"{split}.parquet (it has: {', '.join(have) or 'no data files'}); name the files "
        f"after the splits or set data.train_split / data.eval_split")


def _format(path: Path, source: str) -> str:
    """The `datasets` builder for the file; raises on an unsupported or empty one."""
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ValueError(f"data.source={source!r}: unsupported file type {path.suffix!r}; "
                         f"use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:  # the json builder fails on these with a bare StopIteration
        raise ValueError(f"data.source={source!r}: {str(path)!r} is an empty file; point "
                         f"data.source at data with rows")
    return fmt


def _local_file(path: Path, source: str) -> datasets.Dataset:
    fmt = _format(path, source)
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        # The parse error (e.g. pyarrow's, with a line number) is the useful part.
        detail = exc.__cause__ or exc
        raise ValueError(f"data.source={source!r}: cannot read {str(path)!r} as {path.suffix} "
                         f"({type(detail).__name__}: {detail}); check that it is valid "
                         f"{path.suffix} with at least one row") from exc


def _hub(source: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source, split=split)
    except (OSError, ValueError) as exc:  # ConnectionError, DatasetNotFoundError, bad split
        raise ValueError(
            f"data.source={source!r}, split {split!r}: not a local file or folder, and loading "
            f"it from the Hugging Face hub failed ({type(exc).__name__}: {exc}). Check the "
            f"path or dataset name; offline, download the data and point data.source at the "
            f"files, or use a builtin:<task>") from exc
