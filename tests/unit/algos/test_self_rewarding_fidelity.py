"""Self-Rewarding PPO: the reward is the sequence log-ratio
sum_t log pi_SFT(y_t | .) - log pi_base(y_t | .) (then an optional
normalisation), trained with PPO + GAE and a critic. On a hand-made batch,
rlft's rewards, policy loss and d loss / d log p equal plain-loop references."""

import math

import pytest
import torch
from fidelity import advantages, algorithm, make_batch, outcome_rewards, update

from rlft.algos.self_rewarding import sequence_rewards

PROMPT = [1, 2, 1, 2, 1]
RESP = [3, 2, 4, 3, 2]
GROUP = [0, 0, 0, 1, 1]
L = 5
EPS = 1e-6
g = torch.Generator().manual_seed(21)


def grid(lo, hi):
    return (lo + (hi - lo) * torch.rand(5, L, generator=g, dtype=torch.float64)).tolist()


SFT, BASE, LP, OLD, V_OLD = (grid(-3.0, -0.1), grid(-3.0, -0.1), grid(-2.0, -0.2),
                             grid(-2.0, -0.2), grid(-0.5, 0.5))


def tokens(b):
    return range(PROMPT[b], PROMPT[b] + RESP[b])


def reward_reference(norm):
    raw = [sum(SFT[b][t] - BASE[b][t] for t in tokens(b)) for b in range(len(RESP))]

    def z(rows, center=True):
        vals = [raw[j] for j in rows]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
        return {j: ((raw[j] - mean) if center else raw[j]) / (std + EPS) for j in rows}

    if norm == "none":
        return raw
    if norm == "token_mean":
        return [raw[b] / RESP[b] for b in range(len(RESP))]
    if norm == "group_zscore":
        out = {}
        for gid in set(GROUP):
            out.update(z([j for j in range(len(RESP)) if GROUP[j] == gid]))
        return [out[b] for b in range(len(RESP))]
    return [z(range(len(RESP)), center=norm == "batch_zscore")[b] for b in range(len(RESP))]


def ppo_reference(rewards):
    """GAE (gamma = lam = 1: A_t = R - V_t, whitened) then PPO-clip, token mean."""
    adv = [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        for t in tokens(b):
            adv[b][t] = rewards[b] - V_OLD[b][t]
    flat = [adv[b][t] for b in range(len(RESP)) for t in tokens(b)]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1))
    n = len(flat)
    loss, grad = 0.0, [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        for t in tokens(b):
            a = (adv[b][t] - mean) / (std + EPS)
            r = math.exp(LP[b][t] - OLD[b][t])
            s1, s2 = -a * r, -a * min(max(r, 0.8), 1.2)
            f, d = (s1, -a * r) if s1 >= s2 else (s2, 0.0)
            loss += f / n
            grad[b][t] = d / n
    return loss, grad


@pytest.mark.parametrize("norm", ["none", "token_mean", "group_zscore", "batch_zscore",
                                  "batch_std"])
def test_self_reward_then_ppo(norm):
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, values=V_OLD)
    rewards, raw = sequence_rewards(torch.tensor(SFT, dtype=torch.float64),
                                    torch.tensor(BASE, dtype=torch.float64),
                                    batch.response_mask, batch.group_id, norm, EPS)
    assert rewards.tolist() == pytest.approx(reward_reference(norm), rel=1e-12)
    assert raw.tolist() == pytest.approx(reward_reference("none"), rel=1e-12)

    algo = algorithm("algo.name=self_rewarding_ppo", "algo.self_reward.sft_model=tiny-random",
                     f"algo.self_reward.norm={norm}")
    batch = advantages(algo, batch, outcome_rewards(batch, rewards.tolist()))
    loss, grad, _, _ = update(batch, algo.terms(0), LP)
    ref_loss, ref_grad = ppo_reference(reward_reference(norm))
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-10,
                               atol=1e-14)
