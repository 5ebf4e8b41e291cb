"""pass@k and the evaluation summary, by hand and against enumeration."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlft.commands.evaluate import pass_at_k, summarize


def _enumerated(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of the n samples that hold at least one correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is the fraction correct
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n),
                                                     st.integers(1, n))))
def test_pass_at_k_matches_enumeration(nck):
    n, c, k = nck
    assert math.isclose(pass_at_k(n, c, k), _enumerated(n, c, k), abs_tol=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


def test_summarize_by_hand():
    # prompt 7: 1 of 4 correct; prompt 9: 2 of 4 (0.5 is correct: >= threshold).
    gids = [7, 7, 7, 7, 9, 9, 9, 9]
    rewards = [1.0, 0.0, 0.2, 0.0, 0.5, 0.9, 0.4, 0.0]
    out = summarize(gids, rewards, k=2, threshold=0.5)
    assert out["pass@1"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert out["pass@2"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert out["reward_mean"] == pytest.approx(3.0 / 8)
    assert out["reward_std"] == pytest.approx(math.sqrt(
        sum((r - 3.0 / 8) ** 2 for r in rewards) / 7))
    assert set(out) == {"reward_mean", "reward_std", "pass@1", "pass@2"}
