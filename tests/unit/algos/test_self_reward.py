"""Self-Rewarding PPO's reward and CHORD's mix."""

import statistics

import pytest
import torch

from rlft.algos.chord import chord_combine
from rlft.algos.self_rewarding import self_reward
from rlft.registry import RegistryError

T, F = True, False


def test_self_reward_hand_worked():
    # row 0: response at 1, 2: (-1 - -3) + (-2 - -1) = 2 - 1 = 1 on position 2
    # row 1: response at 0..2: (0 - -1) * 3 = 3 on position 2 (position 3 is padding)
    # row 2: empty response: no reward anywhere
    # row 3: response at 3: -1 - -6 = 5 on position 3
    sft = torch.tensor([[9.0, -1, -2, 9], [0, 0, 0, 9], [9, 9, 9, 9], [9, 9, 9, -1]])
    base = torch.tensor([[0.0, -3, -1, 0], [-1, -1, -1, 0], [0, 0, 0, 0], [0, 0, 0, -6]])
    mask = torch.tensor([[F, T, T, F], [T, T, T, F], [F, F, F, F], [F, F, F, T]])
    out = self_reward(sft, base, mask)
    assert out.tolist() == [[0, 0, 1, 0], [0, 0, 3, 0], [0, 0, 0, 0], [0, 0, 0, 5]]
    # batch_std: sequence rewards 1, 3, 5 (row 2 has none): unbiased std 2 -> 0.5, 1.5, 2.5
    out = self_reward(sft, base, mask, "batch_std", eps=0.0)
    assert out[[0, 1, 3], [2, 2, 3]].tolist() == [0.5, 1.5, 2.5]
    # batch_zscore: mean 3 -> -1, 0, 1
    out = self_reward(sft, base, mask, "batch_zscore", eps=0.0)
    assert out[[0, 1, 3], [2, 2, 3]].tolist() == [-1.0, 0.0, 1.0]
    assert out[2].abs().sum() == 0


def ref_self_reward(sft, base, mask, normalize, eps):
    B, L = mask.shape
    seq = {}
    for b in range(B):
        pos = [t for t in range(L) if mask[b, t]]
        if pos:
            seq[b] = (sum(float(sft[b, t]) - float(base[b, t]) for t in pos), pos[-1])
    vals = [v for v, _ in seq.values()]
    mean, std = statistics.fmean(vals), statistics.stdev(vals)
    out = torch.zeros(B, L, dtype=torch.float64)
    for b, (v, last) in seq.items():
        if normalize == "batch_std":
            v = v / (std + eps)
        elif normalize == "batch_zscore":
            v = (v - mean) / (std + eps)
        out[b, last] = v
    return out


@pytest.mark.parametrize("normalize", ["none", "batch_std", "batch_zscore"])
def test_self_reward_matches_loop(random_batch, normalize):
    mask, _, g = random_batch(5)
    # In float64: float32 sums of a row's tokens round by the CPU's kernel order
    # (issue #25); in float64 that is ~1e-15, so 1e-10 still tests the formula.
    sft = -torch.rand(mask.shape, generator=g, dtype=torch.float64) * 4
    base = -torch.rand(mask.shape, generator=g, dtype=torch.float64) * 4
    got = self_reward(sft, base, mask, normalize)
    want = ref_self_reward(sft, base, mask, normalize, 1e-6)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_self_reward_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(RegistryError, match="batch_zscore"):
        self_reward(x, x, x.bool(), "zscore")
    with pytest.raises(ValueError, match="response_mask"):
        self_reward(x, x, x[:, :2].bool())


def test_chord_combine():
    # (1 - 0.25) * 2 + 0.25 * 4 = 1.5 + 1 = 2.5; gradients 0.75 and 0.25
    rl, expert = torch.tensor(2.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)
    out = chord_combine(rl, expert, 0.25)
    out.backward()
    assert out.item() == 2.5 and rl.grad.item() == 0.75 and expert.grad.item() == 0.25
    assert chord_combine(rl, expert, 0.0).item() == 2.0
    assert chord_combine(rl, expert, 1.0).item() == 4.0
    with pytest.raises(ValueError, match="mu"):
        chord_combine(rl, expert, 1.5)
