"""Shared fixtures and markers.

`tiny_model_path` is built once into the rlft cache (~/.cache/rlft, or
$RLFT_CACHE) and reused by later runs: converting SmolLM2's GGUF tokenizer
takes seconds. Tests never rely on an earlier run: `resolve_model` builds the
folder when it is missing or was written by an older builder version.
"""

import os

# Before torch loads MKL: the reproducible mode Ray actors get (workers/placement.py),
# for the learners that tests run in-process.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
import torch  # noqa: E402

from rlft.models import resolve_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    return resolve_model("tiny-random")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
