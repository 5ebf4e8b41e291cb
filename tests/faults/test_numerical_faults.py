"""Non-finite updates: skipped with a warning, optimizer state untouched, abort after K.

tests/unit/workers/test_learner.py covers a NaN loss (NaN advantages). Here:
a NaN *gradient* under a finite loss, a warning in the log, and the strongest
form of "the optimizer state is not corrupted": good, bad, good ends with
exactly the weights of good, good.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from rlft.algos.base import LOSSES, LossInputs, LossOutput
from rlft.types import TrainBatch
from rlft.workers.learner import Learner, LearnerParams, LossTermSpec, NonFiniteError

VOCAB = 49152


@LOSSES.register("_fault_nan_grad")
def _nan_grad(x: LossInputs) -> LossOutput:
    """Value 0 (finite), gradient NaN: d sqrt(u)/du is inf at u = 0, times du/dlp = 0."""
    return LossOutput(torch.sqrt(x.logprobs * 0.0))


def _batch(seed: int, inf_adv: bool = False) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 12), generator=g)  # [B, L]
    am = torch.ones(4, 12, dtype=torch.bool)
    resp = torch.arange(12)[None, :].expand(4, 12) >= 4  # [B, L]
    adv = torch.randn(4, 1, generator=g).expand(4, 12) * resp
    if inf_adv:
        adv = torch.where(resp, math.inf, 0.0)
    return TrainBatch(input_ids=ids, attention_mask=am, response_mask=resp,
                      advantages=adv.contiguous(), group_id=torch.arange(4) // 2,
                      policy_version=0)


GOOD = [LossTermSpec("ppo_clip", 1.0, "all")]
NAN_GRAD = [LossTermSpec("_fault_nan_grad", 1.0, "all")]


def _weights(lrn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lrn.named_weights()}


def _run(model: str, plan: list[tuple[TrainBatch, list]], **kw):
    lrn = Learner(model, LearnerParams(lr=1e-2, warmup_steps=2, total_steps=8, **kw))
    try:
        stats = [lrn.update(b, terms) for b, terms in plan]
        return stats, _weights(lrn), lrn.steps
    finally:
        lrn.shutdown()


def test_nan_gradient_is_skipped_logged_and_leaves_no_trace(tiny_model_path, caplog):
    b0, b1, bad = _batch(0), _batch(1), _batch(2)
    with caplog.at_level(logging.WARNING, logger="rlft.learner"):
        stats, faulted, steps = _run(tiny_model_path, [(b0, GOOD), (bad, NAN_GRAD), (b1, GOOD)])
    assert stats[1].skipped and math.isfinite(stats[1].loss)
    assert not math.isfinite(stats[1].grad_norm)
    assert "update skipped (1 in a row, limit 3)" in caplog.text
    assert steps == 2 and [s.lr for s in stats] == [5e-3, 1e-2, 1e-2]  # warm-up paused
    _, clean, _ = _run(tiny_model_path, [(b0, GOOD), (b1, GOOD)])
    for name in clean:  # Adam moments, step count and schedule as if the bad step never was
        assert torch.equal(faulted[name], clean[name]), name


def test_k_nonfinite_updates_in_a_row_abort_naming_the_setting(tiny_model_path):
    plan = [(_batch(0), GOOD), (_batch(1, inf_adv=True), GOOD), (_batch(2), NAN_GRAD)]
    with pytest.raises(NonFiniteError, match=r"2 non-finite updates in a row.*"
                                             r"train\.max_nonfinite_steps"):
        _run(tiny_model_path, plan, max_nonfinite_steps=2)


def test_the_critic_skips_then_aborts_like_the_learner(tiny_model_path, caplog):
    """One loss driver: the critic's non-finite guard is the learner's (skip with a
    warning, optimizer untouched, NonFiniteError after K in a row)."""
    from rlft.workers.critic import Critic, CriticParams

    value = [LossTermSpec("value_clip", 1.0, "all", params={"clip": 0.2})]
    good = _batch(0).with_(returns=torch.ones(4, 12), old_values=torch.zeros(4, 12))
    bad = good.with_(returns=torch.where(good.response_mask, math.nan, 0.0))
    critic = Critic(tiny_model_path, CriticParams(lr=1e-3, max_nonfinite_steps=2))
    try:
        with caplog.at_level(logging.WARNING, logger="rlft.learner"):
            assert not critic.update(good, value).skipped and critic.steps == 1
            stats = critic.update(bad, value)
        assert stats.skipped and critic.steps == 1
        assert "critic: non-finite loss" in caplog.text and "(1 in a row, limit 2)" in caplog.text
        assert not critic.update(good, value).skipped  # a good update resets the count
        critic.update(bad, value)
        with pytest.raises(NonFiniteError, match=r"critic: 2 non-finite updates in a row.*"
                                                 r"algo\.ppo\.critic_lr.*max_nonfinite_steps"):
            critic.update(bad, value)
    finally:
        critic.shutdown()
