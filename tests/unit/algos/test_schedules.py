"""CHORD's mu schedule, Prefix-RFT's window and ratio sampler, top-entropy selection."""

import math

import numpy as np
import pytest
import torch

from rlft.algos.schedules import (
    WINDOW_KINDS,
    chord_mu,
    prefix_window,
    sample_prefix_ratio,
    select_top_entropy,
)
from rlft.registry import RegistryError

T, F = True, False


def test_chord_mu_values():
    # peak 0.5, valley 0.1, warm-up 10, decay 20
    # step 0 -> 0; step 5 -> 0.5 * 5/10 = 0.25; step 10 -> 0.5 (peak, cosine starts)
    # step 15: t = 0.25 -> 0.1 + 0.4 * (1 + cos(pi/4)) / 2 = 0.1 + 0.4 * 0.853553 = 0.441421
    # step 20: t = 0.5 -> 0.1 + 0.4 * 0.5 = 0.3; step 30 and later -> 0.1
    want = {0: 0.0, 5: 0.25, 10: 0.5, 15: 0.441421356, 20: 0.3, 30: 0.1, 1000: 0.1}
    for step, value in want.items():
        assert chord_mu(step, 0.5, 0.1, 10, 20) == pytest.approx(value), step
    # no warm-up: starts at the peak; no decay: drops to the valley after warm-up
    assert chord_mu(0, 0.5, 0.1, 0, 20) == 0.5
    assert chord_mu(10, 0.5, 0.1, 10, 0) == 0.1
    with pytest.raises(ValueError, match="mu_peak"):
        chord_mu(0, 1.5, 0.1, 10, 20)


def test_chord_mu_is_continuous_and_monotone_in_each_phase():
    mus = [chord_mu(s, 0.9, 0.05, 7, 13) for s in range(30)]
    assert all(b >= a for a, b in zip(mus[:7], mus[1:8]))  # warm-up rises to the peak
    assert all(b <= a for a, b in zip(mus[7:], mus[8:]))  # then falls, never below valley
    assert max(abs(b - a) for a, b in zip(mus, mus[1:])) <= 0.9 / 7 + 1e-12


def test_prefix_window_values():
    # low 0.2 -> 0.0, high 0.9 -> 0.5, over 100 steps
    # constant: always (0.2, 0.9)
    # linear at 25: w = 0.25 -> (0.2 - 0.05, 0.9 - 0.1) = (0.15, 0.8)
    # cosine at 25: w = (1 - cos(pi/4)) / 2 = 0.146447 -> (0.170711, 0.841421)
    # cosine at 50: w = 0.5 -> (0.1, 0.7); any kind at or past 100 -> (0.0, 0.5)
    args = (100, 0.2, 0.0, 0.9, 0.5)
    assert prefix_window(50, *args, kind="constant") == pytest.approx((0.2, 0.9))
    assert prefix_window(25, *args, kind="linear") == pytest.approx((0.15, 0.8))
    assert prefix_window(25, *args, kind="cosine") == pytest.approx((0.170711, 0.841421), abs=1e-6)
    assert prefix_window(50, *args, kind="cosine") == pytest.approx((0.1, 0.7))
    for kind in ("linear", "cosine"):
        assert prefix_window(100, *args, kind=kind) == pytest.approx((0.0, 0.5))
        assert prefix_window(500, *args, kind=kind) == pytest.approx((0.0, 0.5))
    assert set(WINDOW_KINDS.names()) == {"constant", "linear", "cosine"}
    with pytest.raises(RegistryError, match="cosine"):
        prefix_window(0, *args, kind="cosin")
    with pytest.raises(ValueError, match="low must not exceed high"):
        prefix_window(0, 100, 0.6, 0.0, 0.5, 0.5)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 5.0), (0.5, 0.5), (0.1, 3.0)])
def test_prefix_ratio_bounds_and_moments(alpha, beta):
    n = 40_000
    r = sample_prefix_ratio(torch.Generator().manual_seed(0), n, 0.2, 0.7, alpha, beta)
    assert r.shape == (n,) and r.dtype == torch.float32
    assert (r >= 0.2).all() and (r <= 0.7).all()
    # Beta(a, b) mean a/(a+b), var ab/((a+b)^2 (a+b+1)), mapped by 0.2 + 0.5 * x
    b = (r.double() - 0.2) / 0.5
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert b.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert b.var().item() == pytest.approx(var, rel=0.1)


@pytest.mark.parametrize("alpha,beta", [(2.0, 5.0), (0.5, 0.5)])
def test_prefix_ratio_distribution_matches_numpy_beta(alpha, beta):
    # Two-sample Kolmogorov-Smirnov distance against numpy's Beta sampler;
    # 0.02 is far above the ~0.011 critical value at n = 30k (alpha = 0.001).
    n = 30_000
    ours = np.sort(sample_prefix_ratio(torch.Generator().manual_seed(1), n, 0, 1, alpha,
                                       beta).double().numpy())
    theirs = np.sort(np.random.default_rng(1).beta(alpha, beta, n))
    grid = np.concatenate([ours, theirs])
    d = np.abs(np.searchsorted(ours, grid, "right") - np.searchsorted(theirs, grid, "right"))
    assert d.max() / n < 0.02


def test_prefix_ratio_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = sample_prefix_ratio(torch.Generator().manual_seed(7), 64, 0.1, 0.9, 0.7, 2.0)
    b = sample_prefix_ratio(torch.Generator().manual_seed(7), 64, 0.1, 0.9, 0.7, 2.0)
    c = sample_prefix_ratio(torch.Generator().manual_seed(8), 64, 0.1, 0.9, 0.7, 2.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    # A degenerate window is a constant.
    assert (sample_prefix_ratio(torch.Generator(), 5, 0.3, 0.3, 1, 1) == 0.3).all()
    with pytest.raises(ValueError, match="alpha and beta"):
        sample_prefix_ratio(torch.Generator(), 5, 0, 1, 0.0, 1.0)


def test_select_top_entropy_hand_worked():
    # masked tokens: (0,1)=.5 (0,2)=.7 (0,3)=.1 (1,0)=.7 (1,1)=.8 (1,2)=.3 -> n = 6
    # (0,0)=.9 is the highest entropy but unmasked: never picked.
    ent = torch.tensor([[0.9, 0.5, 0.7, 0.1], [0.7, 0.8, 0.3, 0.0]])
    mask = torch.tensor([[F, T, T, T], [T, T, T, F]])
    # frac 0.5: k = 3 -> .8 (1,1), then the .7 tie (0,2) and (1,0)
    assert select_top_entropy(ent, mask, 0.5).tolist() == [[F, F, T, F], [T, T, F, F]]
    # frac 1/3: k = 2 -> .8 (1,1), then the tie goes to the earlier position (0,2)
    assert select_top_entropy(ent, mask, 1 / 3).tolist() == [[F, F, T, F], [F, T, F, F]]
    # frac 0.25: k = ceil(1.5) = 2, the same two
    assert select_top_entropy(ent, mask, 0.25).tolist() == [[F, F, T, F], [F, T, F, F]]
    assert not select_top_entropy(ent, mask, 0.0).any()
    assert torch.equal(select_top_entropy(ent, mask, 1.0), mask)
    # frac 0.2 of 10 tokens is exactly 2 (the float product 2.0000000000000004 must not round up)
    assert int(select_top_entropy(torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool),
                                  0.2).sum()) == 2


def test_select_top_entropy_matches_loop():
    g = torch.Generator().manual_seed(0)
    ent = torch.randint(0, 6, (7, 9), generator=g).float()  # many ties
    mask = torch.rand(7, 9, generator=g) > 0.3
    for frac in (0.1, 0.37, 0.8):
        cells = [(b, t) for b in range(7) for t in range(9) if mask[b, t]]
        k = math.ceil(frac * len(cells) - 1e-9)
        keep = sorted(cells, key=lambda c: (-float(ent[c]), c))[:k]
        want = torch.zeros(7, 9, dtype=torch.bool)
        for c in keep:
            want[c] = True
        assert torch.equal(select_top_entropy(ent, mask, frac), want), frac
