"""PPO with GAE (Schulman et al., 2016/2017; InstructGPT's KL in the reward):
on a hand-made batch, rlft's policy loss and d loss / d log p, and the critic's
value loss and d loss / d V, equal plain-loop references of the equations."""

import math

import pytest
import torch
from fidelity import advantages, algorithm, make_batch, outcome_rewards, update

PROMPT = [1, 2, 1, 3]
RESP = [4, 3, 5, 2]
REWARD = [1.0, -0.5, 0.25, 2.0]
L = 6
GAMMA, LAM, BETA, EPS = 0.9, 0.8, 0.1, 1e-6
g = torch.Generator().manual_seed(11)


def grid(lo, hi):
    return (lo + (hi - lo) * torch.rand(4, L, generator=g, dtype=torch.float64)).tolist()


LP, OLD, REF = grid(-2.0, -0.2), grid(-2.0, -0.2), grid(-2.0, -0.2)
V_OLD, V = grid(-1.0, 1.0), grid(-1.0, 1.0)


def tokens(b):
    return list(range(PROMPT[b], PROMPT[b] + RESP[b]))


def gae_reference(kl_in_reward):
    """(whitened advantages, returns) [B][L]: delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}, V and A after the last token 0; returns
    A + V; advantages whitened over all response tokens (unbiased std)."""
    adv, ret = [[0.0] * L for _ in RESP], [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        ts = tokens(b)
        r = {t: (-BETA * (OLD[b][t] - REF[b][t]) if kl_in_reward else 0.0) for t in ts}
        r[ts[-1]] += REWARD[b]
        nxt_a = nxt_v = 0.0
        for t in reversed(ts):
            delta = r[t] + GAMMA * nxt_v - V_OLD[b][t]
            nxt_a = delta + GAMMA * LAM * nxt_a
            nxt_v = V_OLD[b][t]
            adv[b][t], ret[b][t] = nxt_a, nxt_a + V_OLD[b][t]
    flat = [adv[b][t] for b in range(len(RESP)) for t in tokens(b)]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1))
    white = [[(adv[b][t] - mean) / (std + EPS) if t in tokens(b) else 0.0 for t in range(L)]
             for b in range(len(RESP))]
    return white, ret


def policy_reference(adv, clip=0.2, dual=3.0, kl=0.0):
    """Dual-clip PPO (Ye et al., 2020) + kl * k3, token mean."""
    n = sum(RESP)
    loss, grad = 0.0, [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        for t in tokens(b):
            a, r = adv[b][t], math.exp(LP[b][t] - OLD[b][t])
            s1, s2 = -a * r, -a * min(max(r, 1 - clip), 1 + clip)
            f, d = (s1, -a * r) if s1 >= s2 else (s2, 0.0)
            if a < 0 and -a * dual < f:
                f, d = -a * dual, 0.0
            e = REF[b][t] - LP[b][t]
            loss += (f + kl * (math.exp(e) - 1 - e)) / n
            grad[b][t] = (d + kl * (1 - math.exp(e))) / n
    return loss, grad


def value_reference(ret, clip=0.2):
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), token mean."""
    n = sum(RESP)
    loss, grad = 0.0, [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        for t in tokens(b):
            v, vo, R = V[b][t], V_OLD[b][t], ret[b][t]
            vc = vo + min(max(v - vo, -clip), clip)
            inside = abs(v - vo) < clip
            if (vc - R) ** 2 > (v - R) ** 2:
                loss += 0.5 * (vc - R) ** 2 / n
                grad[b][t] = (vc - R) * float(inside) / n
            else:
                loss += 0.5 * (v - R) ** 2 / n
                grad[b][t] = (v - R) / n
    return loss, grad


@pytest.mark.parametrize("kl_in_reward", [False, True])
def test_ppo_gae_policy_and_critic(kl_in_reward):
    algo = algorithm("algo.name=ppo", f"algo.gamma={GAMMA}", f"algo.lam={LAM}",
                     f"algo.kl_coef={BETA}", "algo.dual_clip=3.0",
                     f"algo.kl_in_reward={str(kl_in_reward).lower()}")
    batch = make_batch(PROMPT, RESP, [0, 1, 2, 3], old=OLD, ref=REF, values=V_OLD)
    batch = advantages(algo, batch, outcome_rewards(batch, REWARD))
    adv, ret = gae_reference(kl_in_reward)
    torch.testing.assert_close(batch.advantages, torch.tensor(adv, dtype=torch.float64))

    loss, grad, _, _ = update(batch, algo.terms(0), LP)
    ref_loss, ref_grad = policy_reference(adv, kl=0.0 if kl_in_reward else BETA)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-10,
                               atol=1e-14)

    loss, _, grad_v, _ = update(batch, algo.critic_terms, LP, values=V)
    ref_loss, ref_grad = value_reference(ret)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    torch.testing.assert_close(grad_v, torch.tensor(ref_grad, dtype=torch.float64),
                               rtol=1e-10, atol=1e-14)
