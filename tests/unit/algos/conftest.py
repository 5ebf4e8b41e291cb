"""Batches shaped like the learner's: per row a prompt, a contiguous response,
right padding; groups interleaved and of unequal size."""

import pytest
import torch


def spans(rows: list[tuple[int, int]], length: int) -> torch.Tensor:
    """Bool [B, L] response mask from (prompt_len, response_len) per row."""
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, (p, r) in enumerate(rows):
        mask[b, p:p + r] = True
    return mask


@pytest.fixture
def random_batch():
    """(mask [B, L], group_id [B], generator): 23 rows, 7 interleaved groups of
    unequal size (one of size 1), one row with an empty response."""

    def make(seed: int = 0, B: int = 23, L: int = 12):
        g = torch.Generator().manual_seed(seed)
        rows = []
        for b in range(B):
            p = int(torch.randint(1, 5, (1,), generator=g))
            r = int(torch.randint(1, L - p + 1, (1,), generator=g))
            rows.append((p, 0 if b == 4 else r))
        ids = torch.tensor([10, -3, 7, 10, 42, 7, 10, 5, 5, 99, 7, 10, 5, -3, 7, 10, 5, 5, 7,
                            10, 7, -3, 1000])[:B]  # 1000 is alone: a group of one
        return spans(rows, L), ids, g

    return make
