"""Advantage estimators: hand-worked cases and slow loop references."""

import math
import statistics

import pytest
import torch

import rlft.algos  # noqa: F401  (registration)
from rlft.algos.base import ADVANTAGES, AdvantageInputs, AdvantageParams

T, F = True, False

# Six rows, L=4; groups 5 and 9 interleaved, group 3 alone.
#   row  group  prompt  response tokens  token rewards on the response  score
#   0    5      1       3                0.5, 0, 0.5                    1
#   1    9      2       2                0, 2                           2
#   2    5      1       1                0 (+100 on the prompt: masked) 0
#   3    9      0       4                1, 1, 1, 1                     4
#   4    5      2       2                0, 2                           2
#   5    3      1       2                0, 7                           7
HAND_MASK = torch.tensor([[F, T, T, T], [F, F, T, T], [F, T, F, F],
                          [T, T, T, T], [F, F, T, T], [F, T, T, F]])
HAND_REWARDS = torch.tensor([[0, 0.5, 0, 0.5], [0, 0, 0, 2], [100, 0, 0, 0],
                             [1, 1, 1, 1], [0, 0, 0, 2], [0, 0, 7, 0]])
HAND_GROUPS = torch.tensor([5, 9, 5, 9, 5, 3])


def run(name, rewards, mask, groups, values=None, **params):
    fn = ADVANTAGES.get(name)
    return fn(AdvantageInputs(rewards, mask, groups, values), AdvantageParams(**params))


def per_row(adv: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The (constant) advantage of each row's response, checking it is constant."""
    out = []
    for b in range(adv.shape[0]):
        vals = adv[b][mask[b]]
        assert torch.allclose(vals, vals[0].expand_as(vals))
        out.append(float(vals[0]))
    return out


def test_grpo_hand_worked():
    # group 5: scores 1, 0, 2 -> mean 1, unbiased var (0 + 1 + 1) / 2 = 1, std 1
    #          -> advantages 0, -1, 1
    # group 9: scores 2, 4 -> mean 3, var (1 + 1) / 1 = 2, std sqrt 2 -> -1/sqrt2, +1/sqrt2
    # group 3: one row -> 0
    out = run("grpo", HAND_REWARDS, HAND_MASK, HAND_GROUPS, eps=0.0)
    r = 1 / math.sqrt(2)
    assert per_row(out.advantages, HAND_MASK) == pytest.approx([0, -r, -1, r, 1, 0], abs=1e-6)
    assert (out.advantages[~HAND_MASK] == 0).all()
    assert torch.equal(out.returns, out.advantages)


def test_dr_grpo_hand_worked():
    # score - group mean: group 5 mean 1 -> 0, -1, 1; group 9 mean 3 -> -1, 1; lone row -> 0
    out = run("dr_grpo", HAND_REWARDS, HAND_MASK, HAND_GROUPS)
    assert per_row(out.advantages, HAND_MASK) == pytest.approx([0, -1, -1, 1, 1, 0])


def test_rloo_hand_worked():
    # group 5: row0 1 - mean(0, 2) = 0; row2 0 - mean(1, 2) = -1.5; row4 2 - mean(1, 0) = 1.5
    # group 9: row1 2 - 4 = -2; row3 4 - 2 = 2; group 3 alone -> 0
    out = run("rloo", HAND_REWARDS, HAND_MASK, HAND_GROUPS)
    assert per_row(out.advantages, HAND_MASK) == pytest.approx([0, -2, -1.5, 2, 1.5, 0])


def test_reinforce_pp_hand_worked():
    # row 0: prompt 1, response rewards 0, 0, 1, gamma 0.5 -> returns 0.25, 0.5, 1
    # row 1: prompt 2, response reward -1 -> return -1, then padding
    # whiten over the 4 tokens: mean = 0.75 / 4 = 0.1875
    # deviations 0.0625, 0.3125, 0.8125, -1.1875; squares sum 2.171875; var = /3
    mask = torch.tensor([[F, T, T, T], [F, F, T, F]])
    rewards = torch.tensor([[9.0, 0, 0, 1], [0, 0, -1, 0]])  # 9 sits on the prompt: ignored
    out = run("reinforce_pp", rewards, mask, torch.tensor([0, 1]), gamma=0.5, eps=0.0)
    std = math.sqrt(2.171875 / 3)
    expected = [[0, 0.0625 / std, 0.3125 / std, 0.8125 / std], [0, 0, -1.1875 / std, 0]]
    assert out.advantages.tolist() == [pytest.approx(r, abs=1e-6) for r in expected]
    assert out.returns.tolist() == [[0, 0.25, 0.5, 1], [0, 0, -1, 0]]


def test_gae_hand_worked():
    # response = positions 1, 2; values 0.5, 0.25; rewards 0, 1; gamma 0.9, lam 0.8
    # t=2 (last): delta = 1 + 0.9 * 0 - 0.25 = 0.75; A = 0.75
    # t=1: delta = 0 + 0.9 * 0.25 - 0.5 = -0.275; A = -0.275 + 0.9 * 0.8 * 0.75 = 0.265
    # returns = A + V = 0.765, 1.0
    # whitened over the 2 tokens: mean 0.5075, deviations -/+0.2425, std 0.2425 * sqrt 2
    mask = torch.tensor([[F, T, T, F]])
    rewards = torch.tensor([[0.0, 0, 1, 0]])
    values = torch.tensor([[3.0, 0.5, 0.25, 8.0]])  # prompt and padding values are ignored
    out = run("gae", rewards, mask, torch.tensor([0]), values, gamma=0.9, lam=0.8, eps=0.0)
    assert out.returns.tolist() == [pytest.approx([0, 0.765, 1.0, 0])]
    r = 1 / math.sqrt(2)
    assert out.advantages.tolist() == [pytest.approx([0, -r, r, 0], abs=1e-6)]


def test_gae_steps_over_tool_results_as_if_they_were_not_there():
    # A multi-turn row: model tokens at 1-2 and 5-6, a tool's result at 3-4 (not
    # the model's: masked). The environment's tokens are no decision, so GAE must
    # chain token 2 to token 5 exactly as on the row with the result cut out.
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    mask = torch.tensor([[F, T, T, F, F, T, T, F]])
    keep = [0, 1, 2, 5, 6, 7]
    out = run("gae", rewards, mask, torch.tensor([0]), values, gamma=0.9, lam=0.8, eps=0.0)
    cut = run("gae", rewards[:, keep], mask[:, keep], torch.tensor([0]), values[:, keep],
              gamma=0.9, lam=0.8, eps=0.0)
    torch.testing.assert_close(out.returns[:, keep], cut.returns)
    torch.testing.assert_close(out.advantages[:, keep], cut.advantages)
    assert out.returns[0, 3:5].tolist() == [0.0, 0.0]


def test_gae_without_values_says_ppo_needs_a_critic():
    with pytest.raises(ValueError, match="values.*critic"):
        run("gae", HAND_REWARDS, HAND_MASK, HAND_GROUPS)


def test_bad_shapes_name_the_field():
    with pytest.raises(ValueError, match="group_id"):
        run("grpo", HAND_REWARDS, HAND_MASK, HAND_GROUPS[:3])
    with pytest.raises(ValueError, match="response_mask"):
        run("grpo", HAND_REWARDS, HAND_MASK[:, :2], HAND_GROUPS)


# -- loop references -------------------------------------------------------------
# The comparisons below run in float64: in float32 the group/token sums round by
# the order the CPU's kernels pick (issue #25, and permuting rows reorders them);
# in float64 that is ~1e-15, so 1e-10 still tests the formulas.

def ref_group(rewards, mask, groups, kind, eps):
    """Per-row advantage by explicit loops over groups and rows."""
    B = rewards.shape[0]
    scores = [sum(float(rewards[b, t]) for t in range(rewards.shape[1]) if mask[b, t])
              for b in range(B)]
    active = [bool(mask[b].any()) for b in range(B)]
    out = [0.0] * B
    for gid in set(groups.tolist()):
        rows = [b for b in range(B) if int(groups[b]) == gid and active[b]]
        if len(rows) < 2:
            continue
        vals = [scores[b] for b in rows]
        mean, std = statistics.fmean(vals), statistics.stdev(vals)
        for b in rows:
            if kind == "grpo":
                out[b] = (scores[b] - mean) / (std + eps)
            elif kind == "dr_grpo":
                out[b] = scores[b] - mean
            else:  # rloo
                out[b] = scores[b] - (sum(vals) - scores[b]) / (len(rows) - 1)
    return torch.tensor([[out[b] if mask[b, t] else 0.0 for t in range(mask.shape[1])]
                         for b in range(B)], dtype=torch.float64)


def ref_whiten(x, mask, eps):
    vals = [float(x[b, t]) for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]
    mean, std = statistics.fmean(vals), statistics.stdev(vals)
    return torch.tensor([[(float(x[b, t]) - mean) / (std + eps) if mask[b, t] else 0.0
                          for t in range(x.shape[1])] for b in range(x.shape[0])],
                        dtype=torch.float64)


def ref_reinforce(rewards, mask, gamma):
    ret = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        pos = [t for t in range(rewards.shape[1]) if mask[b, t]]
        for i, t in enumerate(pos):
            ret[b, t] = sum(gamma ** j * float(rewards[b, u]) for j, u in enumerate(pos[i:]))
    return ret


def ref_gae(rewards, values, mask, gamma, lam):
    adv = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        pos = [t for t in range(rewards.shape[1]) if mask[b, t]]
        deltas = []
        for i, t in enumerate(pos):
            v_next = float(values[b, pos[i + 1]]) if i + 1 < len(pos) else 0.0
            deltas.append(float(rewards[b, t]) + gamma * v_next - float(values[b, t]))
        for i, t in enumerate(pos):
            adv[b, t] = sum((gamma * lam) ** j * d for j, d in enumerate(deltas[i:]))
    return adv


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_estimators_match_loop(random_batch, kind, seed):
    mask, groups, g = random_batch(seed)
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    if seed == 2:  # binary outcome rewards: many tied groups (std 0 -> advantage 0)
        rewards = (rewards > 0).double() * mask
    out = run(kind, rewards, mask, groups, eps=1e-6)
    ref = ref_group(rewards, mask, groups, kind, 1e-6)
    assert out.advantages.dtype == torch.float64
    torch.testing.assert_close(out.advantages, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_pp_matches_loop(random_batch, seed):
    mask, groups, g = random_batch(seed)
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    out = run("reinforce_pp", rewards, mask, groups, gamma=0.9, eps=1e-6)
    ret = ref_reinforce(rewards, mask, 0.9)
    torch.testing.assert_close(out.returns, ret, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.advantages, ref_whiten(ret, mask, 1e-6),
                               atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_loop(random_batch, seed):
    mask, groups, g = random_batch(seed)
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    values = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    out = run("gae", rewards, mask, groups, values, gamma=0.95, lam=0.9, eps=1e-6)
    adv = ref_gae(rewards, values, mask, 0.95, 0.9)
    ret = torch.where(mask, adv + values, 0.0)
    torch.testing.assert_close(out.returns, ret, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.advantages, ref_whiten(adv, mask, 1e-6),
                               atol=1e-10, rtol=1e-10)


def test_gap_inside_a_response_passes_the_return_through():
    # Tool output at position 2 is masked out: the final reward still reaches
    # position 1, discounted once per response token (gamma^1), not reset.
    mask = torch.tensor([[F, T, F, T]])
    out = run("reinforce_pp", torch.tensor([[0.0, 0, 5, 1]]), mask, torch.tensor([0]), gamma=0.5)
    assert out.returns.tolist() == [[0, 0.5, 0, 1]]


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"])
def test_groups_are_values_not_positions(random_batch, name):
    """Permuting the rows permutes the output and nothing else; zero off-mask."""
    mask, groups, g = random_batch(3)
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    values = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    perm = torch.randperm(mask.shape[0], generator=g)
    out = run(name, rewards, mask, groups, values)
    out_p = run(name, rewards[perm], mask[perm], groups[perm], values[perm])
    torch.testing.assert_close(out_p.advantages, out.advantages[perm], atol=1e-10, rtol=1e-10)
    assert (out.advantages[~mask] == 0).all() and (out.returns[~mask] == 0).all()
    assert torch.isfinite(out.advantages).all()


def test_registry_lists_every_estimator():
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"} <= set(ADVANTAGES.names())
