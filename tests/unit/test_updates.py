"""Several updates per rollout batch: the group-preserving split, the epoch x
minibatch schedule, the averaged figures, and the config that drives them."""

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlft.batch.minibatch import UpdatePlan, _cuts, mean_stats, minibatches, split_groups
from rlft.config import ConfigError, load_config
from rlft.run.wiring import critic_params, learner_params
from rlft.types import TrainBatch
from rlft.workers.learner import UpdateStats


def _batch(group_id: list[int]) -> TrainBatch:
    b = len(group_id)
    return TrainBatch(input_ids=torch.arange(b)[:, None].repeat(1, 3),  # row b holds b
                      attention_mask=torch.ones(b, 3, dtype=torch.bool),
                      response_mask=torch.ones(b, 3, dtype=torch.bool),
                      advantages=torch.zeros(b, 3), group_id=torch.tensor(group_id),
                      policy_version=0)


def test_split_by_hand():
    # Groups 0 (3 rows), 1 (1 row), 2 (2 rows), 3 (2 rows); in order the running
    # totals are 3, 4, 6, 8: the half-way cut at 4 rows falls after group 1.
    gid = torch.tensor([0, 0, 1, 2, 2, 0, 3, 3])
    assert [r.tolist() for r in split_groups(gid, 2)] == [[0, 1, 2, 5], [3, 4, 6, 7]]
    # A large group first: the other minibatch still gets the rest, never nothing.
    assert _cuts([8, 2, 2, 2, 2], 2) == [0, 1, 5]
    assert _cuts([1, 1, 1, 1], 4) == [0, 1, 2, 3, 4]
    assert _cuts([], 3) == [0, 0, 0, 0]  # no demonstration rows: every run empty


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1, 6), min_size=1, max_size=40), st.integers(1, 7),
       st.integers(0, 2**31))
def test_split_keeps_groups_whole_and_covers_every_row_once(gid, k, seed):
    groups = {g for g in gid if g >= 0}
    if k > len(groups):
        with pytest.raises(ValueError, match="lower train.minibatches"):
            split_groups(torch.tensor(gid), k)
        return
    parts = split_groups(torch.tensor(gid), k, torch.Generator().manual_seed(seed))
    assert len(parts) == k
    rows = [b for p in parts for b in p.tolist()]
    assert sorted(rows) == list(range(len(gid)))  # every row exactly once
    for p in parts:
        assert p.tolist() == sorted(p.tolist())  # batch order within a minibatch
        assert any(gid[b] >= 0 for b in p.tolist())  # each minibatch has a group
        for g in {gid[b] for b in p.tolist()} - {-1}:  # a group lies in one minibatch only
            assert sum(gid[b] == g for b in p.tolist()) == gid.count(g)
    demos = [sum(gid[b] < 0 for b in p.tolist()) for p in parts]
    assert max(demos) - min(demos) <= max(1, gid.count(-1) // k)  # spread, not lumped


def test_split_balances_rows_of_unequal_groups():
    # Prefix-RFT-like: per prompt a plain group of 6 and a prefixed group of 2.
    gid = [g for p in range(4) for g in [2 * p] * 6 + [2 * p + 1] * 2]
    for seed in range(20):
        parts = split_groups(torch.tensor(gid), 2, torch.Generator().manual_seed(seed))
        assert sorted(len(p) for p in parts)[0] >= 12  # of 32 rows; 16 each is even


def test_minibatches_schedule_is_seeded_reshuffled_and_whole():
    batch = _batch([g for g in range(6) for _ in range(2)])
    plan = UpdatePlan(epochs=3, minibatches=3, seed=5)
    run = [mb.input_ids[:, 0].tolist() for mb in minibatches(batch, plan, step=4)]
    assert len(run) == 9
    for e in range(3):  # each epoch covers the batch once
        assert sorted(r for mb in run[3 * e:3 * e + 3] for r in mb) == list(range(12))
    assert run == [mb.input_ids[:, 0].tolist() for mb in minibatches(batch, plan, step=4)]
    assert run[:3] != run[3:6] or run[3:6] != run[6:]  # epochs are split afresh
    other = [mb.input_ids[:, 0].tolist() for mb in minibatches(batch, plan, step=5)]
    assert other != run
    # One minibatch: the very batch, once per epoch (no copy, no reordering).
    assert all(mb is batch for mb in minibatches(batch, UpdatePlan(epochs=2), step=0))


def test_minibatches_fall_back_to_the_groups_there_are(caplog):
    batch = _batch([0, 0, 1, 1, -1])  # 2 groups left (dynamic sampling), 3 asked for
    with caplog.at_level(logging.WARNING, logger="rlft"):
        out = list(minibatches(batch, UpdatePlan(epochs=1, minibatches=3), step=0))
    assert len(out) == 2
    assert "fewer than train.minibatches=3" in caplog.text


def test_mean_stats_by_hand():
    a = UpdateStats(loss=1.0, grad_norm=2.0, lr=0.1, entropy=3.0, tokens=10, seconds=1.5,
                    metrics={"clip_frac": 0.0, "kl": 0.5})
    b = UpdateStats(loss=3.0, grad_norm=4.0, lr=0.3, entropy=1.0, tokens=12, seconds=0.5,
                    skipped=True, metrics={"clip_frac": 0.5})
    m = mean_stats([a, b])
    assert (m.loss, m.grad_norm, m.lr, m.entropy) == (2.0, 3.0, pytest.approx(0.2), 2.0)
    assert (m.tokens, m.seconds, m.skipped) == (22, 2.0, True)
    # kl was reported by one update only: its mean is over that one.
    assert m.metrics == {"clip_frac": 0.25, "kl": 0.5, "updates": 2.0}
    c = UpdateStats(loss=1.0, grad_norm=1.0, lr=0.1, entropy=0.0, tokens=3, seconds=1.0,
                    metrics={"values_mean": 0.0, "returns_mean": 1.0})
    assert mean_stats([c]) == UpdateStats(1.0, 1.0, 0.1, 0.0, 3, 1.0,
                                          metrics={"values_mean": 0.0, "returns_mean": 1.0,
                                                   "updates": 1.0})
    with pytest.raises(ValueError, match="at least one update"):
        mean_stats([])


def test_plan_rejects_zero():
    with pytest.raises(ValueError, match="train.epochs, train.minibatches"):
        UpdatePlan(epochs=0)


@pytest.mark.parametrize("override, expected", [
    ("train.minibatches=5", "train.minibatches=5 is more than the 4 prompt groups"),
    ("train.minibatches=0", "train.minibatches: 0 is out of range"),
    ("train.epochs=0", "train.epochs: 0 is out of range"),
])
def test_config_rejects_minibatches_it_cannot_fill(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.prompts_per_step=4", override])
    assert expected in str(info.value)
    if "more than" in expected:
        assert "lower train.minibatches to at most rollout.prompts_per_step=4" in str(info.value)


def test_schedule_counts_optimizer_steps():
    cfg = load_config(None, ["rollout.prompts_per_step=4", "train.steps=10",
                             "train.warmup_steps=2", "train.epochs=2", "train.minibatches=4"])
    assert (cfg.train.epochs, cfg.train.minibatches) == (2, 4)
    p, c = learner_params(cfg), critic_params(cfg)
    assert (p.total_steps, p.warmup_steps) == (80, 16)  # 8 optimizer steps per training step
    assert (c.total_steps, c.warmup_steps) == (80, 16)
    one = learner_params(load_config(None, ["train.steps=10", "train.warmup_steps=2"]))
    assert (one.total_steps, one.warmup_steps) == (10, 2)
