"""Issue 17 item 9a: a step whose groups mostly scored alike is counted in the
metrics every step and warned about once, with the remedies."""

import json
import logging
from pathlib import Path

import torch

from rlft.batch.groups import varied_groups
from rlft.run import tracking
from rlft.run.nothing_to_learn import (
    FLAT,
    FLAT_FRAC,
    FlatGroupWatch,
    count_flat,
    flat_group_metrics,
    remedies,
)
from rlft.types import Prompt, Rollouts, ScoredRollouts, StepMetrics


def _scored(rewards, group_id):
    B = len(rewards)
    ro = Rollouts(prompt_index=(0,) * B, prompts=(Prompt("a", "A", (1,)),),
                  prompt_ids=((1,),) * B, response_ids=((2,),) * B, response_text=("x",) * B,
                  rollout_logprobs=((-0.1,),) * B, prefix_len=(0,) * B,
                  finish_reason=("stop",) * B, group_id=tuple(group_id), policy_version=0)
    return ScoredRollouts(ro, torch.tensor(rewards, dtype=torch.float32), {})


def _step(k, extra):
    return StepMetrics(k, k, 0.0, 0.0, 4.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, {}, extra=extra)


def test_flat_groups_agree_with_the_dapo_filter():
    # groups: 0 flat (1, 1), 1 varied, 2 flat (0, 0, 0), 3 a single sample (left out)
    rewards = [1.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]
    gid = [0, 0, 1, 1, 2, 2, 2, 3]
    assert count_flat(gid, rewards) == (2, 3)
    m = flat_group_metrics(_scored(rewards, gid))
    assert m == {FLAT: 2.0, FLAT_FRAC: 2 / 3}
    # Same verdict per multi-sample group as DAPO's varied_groups (rows 0-6).
    varied = varied_groups(_scored(rewards, gid)).tolist()
    assert varied[:7] == [False, False, True, True, False, False, False]
    # n = 1 everywhere: nothing to compare, no alarm.
    assert flat_group_metrics(_scored([0.0, 0.0], [0, 1])) == {FLAT: 0.0, FLAT_FRAC: 0.0}


def test_the_warning_comes_once_with_count_and_remedies(caplog):
    watch = FlatGroupWatch()
    with caplog.at_level(logging.WARNING, logger="rlft"):
        watch.log(_step(0, {FLAT: 2.0, FLAT_FRAC: 0.5}))  # half is not most
        assert caplog.records == []
        watch.log(_step(1, {FLAT: 3.0, FLAT_FRAC: 0.75}))
        watch.log(_step(2, {FLAT: 4.0, FLAT_FRAC: 1.0}))
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    text = caplog.records[0].getMessage()
    assert text.startswith("step 1: 3 of 4 groups scored the same reward")
    for remedy in ("algo.name=chord", "rlft sft", "{name: format}", "algo.filter_groups=true"):
        assert remedy in text
    assert "\n" not in text


def test_every_run_gets_the_watch_and_the_figure_reaches_the_jsonl(tmp_path):
    sinks = tracking.make_sinks(["jsonl"], tmp_path, "r", "p", {}, 2, 0)
    assert isinstance(sinks[-1], FlatGroupWatch)
    for sink in sinks:
        sink.log(_step(0, flat_group_metrics(_scored([1.0, 1.0, 0.0, 1.0], [0, 0, 1, 1]))))
        sink.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record[FLAT] == 1.0 and record[FLAT_FRAC] == 0.5


def test_the_remedies_are_those_the_run_has_not_taken():
    chord = remedies({"algo": {"name": "chord", "filter_groups": True},
                      "reward": {"terms": [{"name": "accuracy"}]}})
    assert "algo.name=chord" not in chord and "already learns from demonstrations" in chord
    assert "algo.chord.mu_peak" in chord and "{name: format}" in chord
    assert "filter_groups" not in chord
    prefix = remedies({"algo": {"name": "prefix_rft"}, "reward": {"terms": [{"name": "format"}]}})
    assert "algo.prefix.fraction" in prefix and "{name: format}" not in prefix
    sinks = tracking.make_sinks([], Path("."), "r", "p", {"algo": {"name": "chord"}}, 1, 0)
    assert "already learns from demonstrations (CHORD)" in sinks[-1].remedies
