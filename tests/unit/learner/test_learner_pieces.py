"""The learner's plain pieces (rlft/learner): the micro-batch plan, which rows a
term trains on, the LR schedule and loss-term names; hand-worked cases and loop
references, no model."""

import math

import pytest
import torch

from rlft.learner.driver import lr_lambda, term_names
from rlft.learner.microbatch import plan_micro_batches
from rlft.types import TrainBatch


def test_plan_micro_batches_hand_worked():
    # lengths [3, 7, 5, 2], budget 12, longest first: rows 1(7), 2(5), 0(3), 3(2).
    # {1}: adding row 2 -> 2 rows x 7 = 14 > 12, so {1} closes at width 7.
    # {2}: + row 0 -> 2 x 5 = 10 <= 12; + row 3 -> 3 x 5 = 15 > 12, so {2, 0} at width 5.
    # {3}: width 2.
    plan = plan_micro_batches([3, 7, 5, 2], 12)
    assert [(mb.rows.tolist(), mb.cols) for mb in plan] == [([1], 7), ([2, 0], 5), ([3], 2)]
    # A row longer than the budget goes alone rather than being split.
    assert [mb.rows.tolist() for mb in plan_micro_batches([30, 2], 10)] == [[0], [1]]


def test_plan_micro_batches_against_loop():
    g = torch.Generator().manual_seed(3)
    for budget in (1, 17, 40, 1000):
        lengths = torch.randint(1, 20, (25,), generator=g).tolist()
        plan = plan_micro_batches(lengths, budget)
        seen = sorted(r for mb in plan for r in mb.rows.tolist())
        assert seen == list(range(25))  # every row exactly once
        for mb in plan:
            rows = mb.rows.tolist()
            assert mb.cols == max(lengths[r] for r in rows)  # trimmed to its own longest row
            assert len(rows) == 1 or len(rows) * mb.cols <= budget


def test_loss_mask_rows_hand_worked():
    resp = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    batch = TrainBatch(torch.zeros(3, 3, dtype=torch.long), torch.ones(3, 3, dtype=torch.bool),
                       resp, torch.zeros(3, 3), torch.arange(3), 0,
                       expert_mask=torch.tensor([False, True, False]))
    assert batch.loss_mask(rows="all").tolist() == resp.tolist()
    assert batch.loss_mask(rows="expert").tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert batch.loss_mask(rows="policy").tolist() == [[0, 1, 1], [0, 0, 0], [0, 1, 0]]
    no_expert = batch.with_(expert_mask=None)  # every row is a policy row
    assert not no_expert.loss_mask(rows="expert").any()
    assert no_expert.loss_mask(rows="policy").tolist() == resp.tolist()
    with pytest.raises(ValueError, match="rows must be one of"):
        batch.loss_mask(rows="experts")


def test_lr_lambda_hand_worked_and_loop():
    # warm-up 2, cosine to 0.1 at step 6: k=0 -> 1/2, k=1 -> 2/2; then t = (k-2)/4,
    # k=4 -> t=0.5 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55; k>=6 -> 0.1.
    fn = lr_lambda(2, 6, "cosine", 0.1)
    assert [fn(k) for k in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert fn(4) == pytest.approx(0.55) and fn(6) == pytest.approx(0.1)
    assert fn(50) == pytest.approx(0.1)
    lin = lr_lambda(0, 4, "linear", 0.0)
    assert [lin(k) for k in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_lambda(3, 10, "constant", 0.0)(9) == 1.0

    def loop(k, warm, total, kind, floor):
        if k < warm:
            return (k + 1) / warm
        frac = min(1.0, (k - warm) / max(1, total - warm))
        decay = {"constant": 1.0, "linear": 1 - frac,
                 "cosine": (1 + math.cos(math.pi * frac)) / 2}[kind]
        return decay if kind == "constant" else floor + (1 - floor) * decay

    for kind in ("constant", "linear", "cosine"):
        fn = lr_lambda(3, 11, kind, 0.2)
        for k in range(15):
            assert fn(k) == pytest.approx(loop(k, 3, 11, kind, 0.2))


def test_term_names_number_repeated_losses():
    assert term_names(["ppo_clip", "kl"]) == ["ppo_clip", "kl"]
    assert term_names(["sft_ce", "kl", "sft_ce"]) == ["sft_ce#0", "kl", "sft_ce#2"]
