"""Row surgery before collate (DAPO's filter, sampling rounds, demonstration rows)
and collate's masks, on hand-built rollouts."""

import math
from dataclasses import replace

import pytest
import torch

from rlft.algos.base import AdvantageParams
from rlft.batch.collate import add_expert_rows, collate, demonstration_rollouts, with_advantages
from rlft.batch.groups import first_groups, merge_rounds, num_groups, take, varied_groups
from rlft.types import Prompt, RewardFailures, Rollouts, ScoredRollouts

PROMPTS = (Prompt("a", "A", (1, 2)), Prompt("b", "B", (3,)))


def scored(rewards, group_id, prompt_index=None, prefix_len=None, version=0, comp=None):
    """One response [10+b, 20+b] per row (two tokens); prompt = PROMPTS[index]."""
    B = len(rewards)
    index = tuple(prompt_index or [0] * B)
    ro = Rollouts(
        prompt_index=index, prompts=PROMPTS,
        prompt_ids=tuple(PROMPTS[i].prompt_ids for i in index),
        response_ids=tuple((10 + b, 20 + b) for b in range(B)),
        response_text=tuple(f"r{b}" for b in range(B)),
        rollout_logprobs=tuple((-0.5, -0.25) for _ in range(B)),
        prefix_len=tuple(prefix_len or [0] * B), finish_reason=("stop",) * B,
        group_id=tuple(group_id), policy_version=version)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return ScoredRollouts(ro, rewards, {"acc": comp if comp is not None else rewards.clone()},
                          RewardFailures(raised=1), seconds=0.5)


def test_varied_groups_hand_worked():
    # groups: 7 -> {1, 1} uniform; 8 -> {0, 2} varied; 9 -> {3, 3}; 10 -> {5} alone (no spread)
    s = scored([1, 1, 0, 2, 3, 3, 5], [7, 7, 8, 8, 9, 9, 10])
    assert varied_groups(s).tolist() == [False, False, True, True, False, False, False]
    # interleaved rows and negative ids are grouped by value, not position
    s = scored([0, 1, 0, 0], [-3, 4, -3, 4])
    assert varied_groups(s).tolist() == [False, True, False, True]


def test_take_keeps_rows_and_prompts():
    s = scored([0.0, 1.0, 2.0], [0, 0, 1], prompt_index=[0, 1, 1], prefix_len=[0, 1, 2])
    t = take(s, torch.tensor([False, True, True]))
    ro = t.rollouts
    assert ro.prompts == PROMPTS and ro.prompt_index == (1, 1)
    assert ro.response_ids == ((11, 21), (12, 22)) and ro.prefix_len == (1, 2)
    assert t.rewards.tolist() == [1.0, 2.0] and t.components["acc"].tolist() == [1.0, 2.0]
    assert [ro.row(b).uid for b in range(2)] == ["b", "b"]
    with pytest.raises(ValueError, match=r"keep has shape"):
        take(s, torch.tensor([True]))


def test_first_groups_in_order_of_appearance():
    s = scored([0, 1, 2, 3, 4], [5, 2, 5, 9, 2])
    assert first_groups(s, 2).rollouts.group_id == (5, 2, 5, 2)
    assert num_groups(first_groups(s, 10)) == 3


def test_merge_rounds_renumbers_groups_and_sums_failures():
    a = scored([0, 1], [4, 4])
    b = scored([2, 3, 4], [4, 5, 5], comp=torch.tensor([1.0, 0.0, 1.0]))
    b = ScoredRollouts(b.rollouts, b.rewards, {"fmt": b.components["acc"]}, b.failures, 0.25)
    m = merge_rounds([a, b])
    # (round 0, id 4) -> 0; (round 1, id 4) -> 1; (round 1, id 5) -> 2
    assert m.rollouts.group_id == (0, 0, 1, 2, 2)
    assert m.rewards.tolist() == [0, 1, 2, 3, 4]
    assert m.failures.raised == 2 and m.seconds == 0.75
    assert torch.isnan(m.components["acc"][2:]).all() and torch.isnan(m.components["fmt"][:2]).all()
    assert merge_rounds([a]) is a


def test_expert_rows_collate_without_shifting_the_baseline():
    s = scored([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], prompt_index=[0, 0, 1, 1], version=3)
    demo = demonstration_rollouts([PROMPTS[1], PROMPTS[0]], [(7, 8, 9), (6,)], ["d1", "d0"])
    both = add_expert_rows(s, demo)
    ro = both.rollouts
    assert ro.policy_version == 3 and ro.expert == (False,) * 4 + (True, True)
    assert both.rewards.tolist()[4:] == [0.0, 0.0] and torch.isnan(both.components["acc"][4:]).all()

    batch, token_rewards = collate(both, pad_id=0)
    assert batch.expert_mask.tolist() == [False] * 4 + [True, True]
    # row 4: prompt (3,) + demo (7, 8, 9); row 5: prompt (1, 2) + demo (6,), padded with 0
    assert batch.input_ids[4].tolist() == [3, 7, 8, 9]
    assert batch.input_ids[5].tolist() == [1, 2, 6, 0]
    assert batch.response_mask[4].tolist() == [False, True, True, True]
    assert batch.response_mask[5].tolist() == [False, False, True, False]
    assert batch.rollout_logprobs[4:].abs().sum() == 0  # demonstrations were never sampled

    out = with_advantages(batch, token_rewards, "grpo", AdvantageParams())
    alone, tr = collate(s, pad_id=0)
    ref = with_advantages(alone, tr, "grpo", AdvantageParams())
    assert torch.equal(out.advantages[:4, :ref.advantages.shape[1]], ref.advantages)
    assert not out.advantages[4:].any()
    # group 0 scored (1, 0): +-1/sqrt(2); group 1 is uniform: 0
    assert out.advantages[0, 2] == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert not out.advantages[2:4].any()


def test_add_expert_rows_refuses_sampled_rows():
    with pytest.raises(ValueError, match="every appended row must be a demonstration"):
        add_expert_rows(scored([1.0], [0]), replace(scored([2.0], [0]).rollouts, expert=(False,)))


def test_collate_marks_forced_prefix_tokens():
    # row 0: prompt (1, 2), 2 forced of 2 response tokens; row 1: prompt (3,), 1 forced
    s = scored([0.0, 1.0], [0, 0], prompt_index=[0, 1], prefix_len=[2, 1])
    batch, _ = collate(s, pad_id=0)
    assert batch.prefix_mask.tolist() == [[False, False, True, True],
                                          [False, True, False, False]]
    assert not (batch.prefix_mask & ~batch.response_mask).any()
