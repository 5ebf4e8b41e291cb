"""What the loop tests share (imported as a sibling module, as engine_check is).

`ray_per_module` is an autouse fixture wherever it is imported: each module
ends by shutting down the local Ray cluster its loops started, so the next
module's loops start one with their own `ray.*` settings.
"""

from __future__ import annotations

import pytest
import ray
import torch


def learner_weights(trainer) -> dict[str, torch.Tensor]:
    """Learner rank 0's full state dict (every rank holds the same weights)."""
    return ray.get([lrn.full_state.remote() for lrn in trainer.pools.learners])[0]


@pytest.fixture(scope="module", autouse=True)
def ray_per_module():
    yield
    ray.shutdown()
