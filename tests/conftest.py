"""Shared fixtures. The tiny model is built once into the rlft cache
(~/.cache/rlft or $RLFT_CACHE) and reused; a first run creates it."""

import pytest
import torch

from rlft.models import resolve_model


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    return resolve_model("tiny-random")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
