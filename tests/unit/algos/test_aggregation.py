"""Aggregation: hand-worked values, loop references, micro-batch invariance."""

import pytest
import torch

from rlft.algos.aggregation import AGGREGATIONS, aggregate, count, masked_mean
from rlft.algos.base import GlobalCounts
from rlft.registry import RegistryError

MODES = ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
T, F = True, False


def test_hand_worked():
    # loss [[1, 2, 3], [4, 5, 6], [7, 8, 9]], mask keeps 1, 2 | 4 | nothing
    # tokens = 3, seqs = 2 (the empty row is not a sequence of this term)
    # token_mean              (1 + 2 + 4) / 3     = 7/3
    # seq_mean_token_sum      (1 + 2 + 4) / 2     = 3.5
    # seq_mean_token_mean     (1.5 + 4) / 2       = 2.75
    # seq_mean_token_sum_norm 7 / (2 seqs * 4)    = 0.875
    loss = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[T, T, F], [T, F, F], [F, F, F]])
    counts = count(mask)
    assert counts == GlobalCounts(tokens=3, seqs=2)
    want = {"token_mean": 7 / 3, "seq_mean_token_sum": 3.5, "seq_mean_token_mean": 2.75,
            "seq_mean_token_sum_norm": 0.875}
    for mode, value in want.items():
        assert aggregate(loss, mask, mode, counts, norm_const=4).item() == pytest.approx(value)
    # masked_mean (metrics): mean of 1, 2, 4
    assert masked_mean(loss, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(loss, torch.zeros_like(mask)).item() == 0.0


def ref_aggregate(loss, mask, mode, norm_const):
    """Loop reference over one whole batch."""
    rows = [[float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]]
            for b in range(loss.shape[0])]
    rows = [r for r in rows if r]
    tokens = sum(len(r) for r in rows)
    if mode == "token_mean":
        return sum(map(sum, rows)) / tokens
    if mode == "seq_mean_token_sum":
        return sum(map(sum, rows)) / len(rows)
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(map(sum, rows)) / (len(rows) * norm_const)


def random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, L = 12, 10
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        p = int(torch.randint(1, 4, (1,), generator=g))
        r = 0 if b in (3, 7) else int(torch.randint(1, L - p + 1, (1,), generator=g))
        mask[b, p:p + r] = True
    x = torch.randn(B, L, generator=g, dtype=torch.float64)
    theta = torch.randn(L, generator=g, dtype=torch.float64)
    return x, theta, mask


def per_token_loss(x, theta):
    # Nonlinear in a parameter shared by every row, so the gradient mixes rows.
    return torch.sin(x * theta) + x**2 * theta  # [B, L]


@pytest.mark.parametrize("mode", MODES)
def test_matches_loop(mode):
    x, theta, mask = random_case(0)
    loss = per_token_loss(x, theta)
    got = aggregate(loss, mask, mode, count(mask), norm_const=16)
    assert got.item() == pytest.approx(ref_aggregate(loss, mask, mode, 16), rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_split_gives_the_whole_batch_gradient(mode):
    x, theta, mask = random_case(1)
    counts = count(mask)  # whole-step counts, as the learner all-reduces them
    whole_theta = theta.clone().requires_grad_(True)
    whole = aggregate(per_token_loss(x, whole_theta), mask, mode, counts, norm_const=16)
    whole.backward()

    split_theta = theta.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for rows in ([0, 1, 2], [3, 4, 5, 6, 7], [8], [9, 10, 11]):
        # Like the learner: each micro-batch is cut to its own longest row.
        cols = int(mask[rows].nonzero()[:, 1].max()) + 1 if mask[rows].any() else 1
        loss = per_token_loss(x[rows, :cols], split_theta[:cols])
        part = aggregate(loss, mask[rows, :cols], mode, counts, norm_const=16)
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(split_theta.grad, whole_theta.grad, rtol=1e-12, atol=1e-12)


def test_micro_batch_invariance_needs_global_counts():
    # The check above can fail: with each micro-batch's LOCAL counts the
    # token-mean of two unequal halves is not the whole-batch token mean.
    x, theta, mask = random_case(1)
    loss = per_token_loss(x, theta)
    whole = aggregate(loss, mask, "token_mean", count(mask))
    local = sum(aggregate(loss[r], mask[r], "token_mean", count(mask[r]))
                for r in (slice(0, 3), slice(3, 12))) / 2
    assert abs(local.item() - whole.item()) > 1e-3


def test_masked_positions_never_leak():
    # inf / NaN at a prompt or padding position must not reach the loss.
    loss = torch.tensor([[float("nan"), 1.0, float("inf")]])
    mask = torch.tensor([[F, T, F]])
    for mode in MODES:
        assert aggregate(loss, mask, mode, count(mask), norm_const=1).item() == 1.0


def test_errors_name_the_fix():
    loss, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="norm_const"):
        aggregate(loss, mask, "seq_mean_token_sum_norm", count(mask))
    with pytest.raises(RegistryError, match="token_mean"):
        aggregate(loss, mask, "token_means", count(mask))
    with pytest.raises(ValueError, match="mask shape"):
        aggregate(loss, mask[:, :2], "token_mean", count(mask))
    assert set(MODES) == set(AGGREGATIONS.names())
