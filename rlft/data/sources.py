"""Where rows come from: `data.source` -> a `datasets.Dataset` of one split.

Sources, resolved in this order:
- `builtin:<task>`: a task generated in code (rlft/data/tasks: arithmetic,
  json_extract, tool_call), splits `train` and `eval`.
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

from rlft.data.prompts import JSON_FIELDS
from rlft.registry import RegistryError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(source: str, split: str) -> datasets.Dataset:
    """The rows of one split of `source` (see the module docstring)."""
    if source.startswith("builtin:"):
        ds = _builtin(source, split)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            ds = _local_file(_split_file(path, source, split), source)
        elif path.is_file():
            ds = _local_file(path, source)
        elif source.startswith((".", "/", "~")) or path.suffix in FORMATS:
            raise FileNotFoundError(f"data.source={source!r}: no such file or folder; check the "
                                    f"path (relative paths start from {str(Path.cwd())!r})")
        else:
            ds = _hub(source, split)
    if len(ds) == 0:
        raise ValueError(f"data.source={source!r}, split {split!r}: the dataset is empty; "
                         f"point data.source at data with rows")
    return ds


def _builtin(source: str, split: str) -> datasets.Dataset:
    from rlft.data.tasks import TASKS

    try:
        task = TASKS.get(source.removeprefix("builtin:"))
    except RegistryError as exc:
        raise ValueError(f"data.source={source!r}: {exc}") from exc
    rows = task(split)
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


def _local_file(path: Path, source: str) -> datasets.Dataset:
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ValueError(f"data.source={source!r}: unsupported file type {path.suffix!r}; "
                         f"use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:  # the json builder fails on these with a bare StopIteration
        raise ValueError(f"data.source={source!r}: {str(path)!r} is an empty file; point "
                         f"data.source at data with rows")
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
