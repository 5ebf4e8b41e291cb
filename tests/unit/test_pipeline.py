"""The rollout-ahead pipeline (rlft/run/pipeline.py) with a plain producer: what
it samples ahead, with which version, where a checkpoint puts the sampler, and
the staleness guard (regenerate / drop). The real loop: tests/integration/
test_async_loop.py and tests/faults/test_async_resume.py."""

from __future__ import annotations

import threading

import pytest
import torch

from rlft.data.sampler import PromptSampler
from rlft.run.pipeline import Collected, LostWeights, RolloutAhead
from rlft.types import Prompt, PromptBatch, Rollouts, ScoredRollouts

PROMPTS = [Prompt(f"p{i}", f"q{i}", (i,)) for i in range(5)]


class Producer:
    """Samples `prompts` "with weights `version`": one row per prompt."""

    def __init__(self, lose_at: int | None = None) -> None:
        self.calls: list[tuple[int, int, tuple[str, ...], str]] = []
        self.lose_at = lose_at

    def __call__(self, step, version, source) -> Collected:
        prompts = next(source)
        self.calls.append((step, version, tuple(p.uid for p in prompts),
                           threading.current_thread().name))
        if step == self.lose_at:
            self.lose_at = None
            raise LostWeights("rollouts came from policy versions [0]")
        n = len(prompts)
        ro = Rollouts(prompt_index=tuple(range(n)), prompts=tuple(prompts),
                      prompt_ids=tuple(p.prompt_ids for p in prompts), response_ids=((1,),) * n,
                      response_text=("a",) * n, rollout_logprobs=((0.0,),) * n,
                      prefix_len=(0,) * n, finish_reason=("stop",) * n,
                      group_id=tuple(range(n)), policy_version=version)
        scored = ScoredRollouts(ro, torch.zeros(n), {})
        return Collected(step, version, PromptBatch.plain(list(prompts), 1), scored, scored, {},
                         {"rollout": 0.5}, (tuple(prompts),))


def _pipeline(depth, policy="regenerate", produce=None):
    sampler = PromptSampler(PROMPTS, 2, seed=0, shuffle=False)
    return RolloutAhead(produce or Producer(), sampler, depth, policy), sampler


def _train(ahead, steps, start=0, version=None, on_lost=lambda: None):
    """The loop's order: take, (update), version + 1, settle, (sync)."""
    out, version = [], start if version is None else version
    for step in range(start, start + steps):
        item, flow = ahead.take(step, version, on_lost)
        version += 1
        ahead.settle()
        out.append((item, flow))
    return out


def test_k0_samples_inline_in_order():
    ahead, _ = _pipeline(0)
    got = _train(ahead, 3)
    assert [i.draws for i, _ in got] == [(0, 1), (2, 3), (4, 5)]
    assert [i.version for i, _ in got] == [0, 1, 2]
    assert {c[3] for c in ahead.produce.calls} == {threading.current_thread().name}


def test_k1_runs_one_batch_ahead_in_the_producer_thread():
    ahead, sampler = _pipeline(1)
    got = _train(ahead, 3)
    assert [(i.step, i.version) for i, _ in got] == [(0, 0), (1, 0), (2, 1)]
    assert [f.queue for _, f in got] == [1, 1, 1]
    assert all(c[3].startswith("rollout-ahead") for c in ahead.produce.calls)
    # The batch of step 3 is sampled (draws 6, 7); a checkpoint rewinds to before it.
    assert ahead.inflight() == [{"step": 3, "policy_version": 2, "draws": [6, 7]}]
    assert ahead.sampler_state()["position"] == 1 and ahead.sampler_state()["epoch"] == 1
    assert sampler.drawn == 8
    ahead.close()


def test_a_resumed_pipeline_draws_the_inflight_batch_again():
    first, _ = _pipeline(1)
    _train(first, 3)
    state = first.sampler_state()
    first.close()
    again, sampler = _pipeline(1)
    sampler.load_state_dict(state)
    got = _train(again, 2, start=3)
    assert [i.draws for i, _ in got] == [(6, 7), (8, 9)]
    assert [i.version for i, _ in got] == [3, 3]  # the restored weights; staleness 0, then 1
    again.close()


@pytest.mark.parametrize("policy", ["regenerate", "drop"])
def test_a_batch_older_than_k_versions_is_not_trained(policy):
    ahead, _ = _pipeline(1, policy)
    _train(ahead, 1)  # step 1's batch sampled with version 0
    item, flow = ahead.take(1, 5, lambda: None)  # ... but the learner is at version 5
    assert item.version == 5
    if policy == "regenerate":  # the same prompts, sampled again
        assert (item.step, item.draws, flow.regenerated, flow.dropped) == (1, (2, 3), 1, 0)
    else:  # the next batch in line (sampled with version 5) takes its place
        assert (item.step, item.draws, flow.dropped, flow.dropped_draws) == (2, (4, 5), 2, (2, 3))
    # A checkpoint now rewinds to the first draw not yet trained (5 prompts an epoch).
    ahead.settle()
    want = 6 if policy == "drop" else 4
    assert ahead.sampler_state()["position"] + 5 * ahead.sampler_state()["epoch"] == want
    ahead.close()


def test_lost_weights_resend_then_sample_the_same_prompts_again():
    resent = []
    ahead, _ = _pipeline(1, produce=Producer(lose_at=1))
    got = _train(ahead, 3, on_lost=lambda: resent.append(True))
    assert resent == [True]
    assert [i.draws for i, _ in got] == [(0, 1), (2, 3), (4, 5)]
    assert [f.regenerated for _, f in got] == [0, 1, 0]
    assert got[1][0].version == 1  # sampled again with the weights at hand
    ahead.close()


def test_errors_name_the_setting():
    with pytest.raises(ValueError, match="train.stale_policy"):
        _pipeline(1, "keep")
    with pytest.raises(ValueError, match="train.max_staleness"):
        _pipeline(-1)


def test_async_config_fails_before_any_model_loads():
    from rlft.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="algo.rollout_is.mode at auto"):
        load_config(None, ["train.max_staleness=1", "algo.rollout_is.mode=none"])
    with pytest.raises(ConfigError, match="rollout.mode=split"):
        load_config(None, ["train.max_staleness=1", "algo.rollout_is.mode=tis",
                           "rollout.mode=colocated"])
    cfg = load_config(None, ["train.max_staleness=2", "algo.rollout_is.mode=mis",
                             "train.stale_policy=drop"])
    assert (cfg.train.max_staleness, cfg.train.stale_policy) == (2, "drop")


def test_nothing_is_sampled_past_the_last_step_and_a_failed_batch_is_not_skipped():
    class Fails(Producer):
        def __call__(self, step, version, source):
            if step == 2:
                next(source)
                raise RuntimeError("reward failures over the ceiling")
            return super().__call__(step, version, source)

    ahead, _ = _pipeline(1, produce=Fails())
    ahead.steps = 3
    _train(ahead, 2)
    assert ahead.sampler_state()["position"] == 4  # before step 2's draws
    with pytest.raises(RuntimeError, match="ceiling"):
        ahead.take(2, 2, lambda: None)
    assert [c[0] for c in ahead.produce.calls] == [0, 1]  # step 3 is past the end
