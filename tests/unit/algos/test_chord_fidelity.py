"""CHORD (Zhang et al., 2025; Trinity-RFT's `mix_chord` / `sft_phi`):
L = (1 - mu) L_GRPO(sampled rows) + mu L_SFT-phi(demonstration rows), with
L_SFT-phi = -(1/N) sum_t phi(p_t) log p_t, phi = p (1 - p), p detached. On a
hand-made batch, rlft's loss and d loss / d log p equal a plain-loop reference."""

import math

import pytest
import torch
from fidelity import advantages, algorithm, make_batch, outcome_rewards, update

from rlft.algos.schedules import chord_mu

PROMPT = [1, 2, 1, 2, 1, 2]
RESP = [3, 2, 4, 3, 4, 3]
GROUP = [0, 0, 1, 1, -1, -1]
EXPERT = [False, False, False, False, True, True]  # the last two rows are demonstrations
REWARD = [1.0, 0.0, 0.0, 0.5, 0.0, 0.0]
L = 6
EPS = 1e-6
g = torch.Generator().manual_seed(5)
LP = (-1.5 + 1.45 * torch.rand(6, L, generator=g, dtype=torch.float64)).tolist()
OLD = (-1.5 + 1.45 * torch.rand(6, L, generator=g, dtype=torch.float64)).tolist()


def tokens(b):
    return range(PROMPT[b], PROMPT[b] + RESP[b])


def reference(mu, phi=True, cutoff=None):
    policy = [b for b in range(len(RESP)) if not EXPERT[b]]
    expert = [b for b in range(len(RESP)) if EXPERT[b]]
    n_pol, n_exp = sum(RESP[b] for b in policy), sum(RESP[b] for b in expert)
    loss, grad = 0.0, [[0.0] * L for _ in RESP]
    for b in policy:  # GRPO: (r - group mean) / (unbiased group std + eps), PPO-clip
        mates = [REWARD[j] for j in policy if GROUP[j] == GROUP[b]]
        mean = sum(mates) / len(mates)
        std = math.sqrt(sum((x - mean) ** 2 for x in mates) / (len(mates) - 1))
        a = (REWARD[b] - mean) / (std + EPS)
        for t in tokens(b):
            r = math.exp(LP[b][t] - OLD[b][t])
            s1, s2 = -a * r, -a * min(max(r, 0.8), 1.2)
            f, d = (s1, -a * r) if s1 >= s2 else (s2, 0.0)
            loss += (1 - mu) * f / n_pol
            grad[b][t] = (1 - mu) * d / n_pol
    for b in expert:
        for t in tokens(b):
            p = math.exp(LP[b][t])
            w = p * (1 - p) if phi else 1.0
            if cutoff is not None and p > cutoff:
                w = 0.0
            loss += mu * (-w * LP[b][t]) / n_exp
            grad[b][t] = mu * (-w) / n_exp
    return loss, grad


@pytest.mark.parametrize("step,phi,cutoff", [(0, True, None), (3, True, 0.5), (1, False, None)])
def test_chord_mixes_grpo_and_the_phi_weighted_expert_term(step, phi, cutoff):
    algo = algorithm("algo.name=chord", "algo.chord.mu_peak=0.4", "algo.chord.mu_valley=0.05",
                     "algo.chord.warmup_steps=0", "algo.chord.decay_steps=4",
                     f"algo.chord.phi={str(phi).lower()}",
                     f"algo.chord.cutoff_prob={'null' if cutoff is None else cutoff}")
    mu = chord_mu(step, 0.4, 0.05, 0, 4)
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, expert=EXPERT)
    batch = advantages(algo, batch, outcome_rewards(batch, REWARD))
    loss, grad, _, _ = update(batch, algo.terms(step), LP)
    ref_loss, ref_grad = reference(mu, phi, cutoff)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-10,
                               atol=1e-14)
    if cutoff is not None:  # the cutoff dropped some demonstration tokens
        assert any(math.exp(LP[b][t]) > cutoff for b in (4, 5) for t in tokens(b))
