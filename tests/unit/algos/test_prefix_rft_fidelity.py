"""Prefix-RFT (Huang et al., 2025, arXiv 2507.01679; the authors' verl recipe
`prefix_rft/core_algos.py` and `dp_actor.py`): on a hand-made batch, rlft's
loss and d loss / d log p equal a plain-loop reference of the paper's rules.

- Sampled tokens: Dr.GRPO (the paper's estimator) within (prompt, prefix)
  groups: reward - the group's mean; a group of one gets 0.
- Forced prefix tokens of a prefixed sample i of prompt g:
  (r_i - mean reward of g's plain samples) / (g's prefixed samples).
- Entropy clip: prefix tokens outside the step's top `entropy_top_frac` by
  entropy get advantage 0, and still count in the token mean.
- One token mean over sampled and prefix tokens (two PPO-clip terms).
"""

import math

import pytest
import torch
from fidelity import advantages, algorithm, make_batch, outcome_rewards, update

# Prompt 5: rows 0, 1 plain, rows 2, 3 share a 2-token prefix. Prompt 9: rows 4, 5
# plain, row 6 alone with a 3-token prefix (the paper's one prefixed sample).
PROMPT = [2, 1, 2, 1, 2, 1, 1]
RESP = [3, 4, 5, 4, 3, 2, 5]
PREFIX = [0, 0, 2, 2, 0, 0, 3]
GROUP = [5, 5, 5, 5, 9, 9, 9]
REWARD = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
L = 7
g = torch.Generator().manual_seed(4)
LP = (-2 + 1.9 * torch.rand(7, L, generator=g, dtype=torch.float64)).tolist()
OLD = (-2 + 1.9 * torch.rand(7, L, generator=g, dtype=torch.float64)).tolist()
ENT = torch.rand(7, L, generator=g, dtype=torch.float64)


def tokens(b):
    return range(PROMPT[b], PROMPT[b] + RESP[b])


def forced(b, t):
    return PROMPT[b] <= t < PROMPT[b] + PREFIX[b]


def reference_advantages(top_frac, rewards=REWARD, credit=True):
    """[B][L] advantages from the rules above (credit=False: the prefix tokens
    keep their group-relative advantage, as rlft did before)."""
    adv = [[0.0] * L for _ in RESP]
    prefix_tokens = [(b, t) for b in range(len(RESP)) for t in tokens(b) if forced(b, t)]
    k = math.ceil(top_frac * len(prefix_tokens) - 1e-9)
    kept = set(sorted(prefix_tokens, key=lambda bt: (-float(ENT[bt]), bt))[:k])
    for b in range(len(RESP)):
        mates = [j for j in range(len(RESP))
                 if GROUP[j] == GROUP[b] and (PREFIX[j] > 0) == (PREFIX[b] > 0)]
        sampled = rewards[b] - sum(rewards[j] for j in mates) / len(mates) \
            if len(mates) > 1 else 0.0
        plain = [rewards[j] for j in range(len(RESP)) if GROUP[j] == GROUP[b] and not PREFIX[j]]
        n_pre = sum(1 for j in range(len(RESP)) if GROUP[j] == GROUP[b] and PREFIX[j])
        push = (rewards[b] - sum(plain) / len(plain)) / n_pre if credit else sampled
        for t in tokens(b):
            adv[b][t] = (push if (b, t) in kept else 0.0) if forced(b, t) else sampled
    return adv


def reference(adv, old=None, agg="token_mean", clip=(0.2, 0.2), prefix_clip=(0.2, 0.2)):
    """(loss, grad, clipped sampled / prefix token counts) of the two PPO terms."""
    n_tok = sum(RESP)
    loss, grad, clipped = 0.0, [[0.0] * L for _ in RESP], {"sampled": 0, "prefix": 0}
    for b in range(len(RESP)):
        for t in tokens(b):
            lo, hi = prefix_clip if forced(b, t) else clip
            r = math.exp(LP[b][t] - (LP[b][t] if old is None else old[b][t]))
            a = adv[b][t]
            s1, s2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
            f, d = (s1, -a * r) if s1 >= s2 else (s2, 0.0)
            clipped["prefix" if forced(b, t) else "sampled"] += s2 > s1
            scale = 1 / n_tok if agg == "token_mean" else 1 / (len(RESP) * RESP[b])
            loss += scale * f
            grad[b][t] = scale * d
    return loss, grad, clipped


def run(*overrides, old=None):
    algo = algorithm("algo.name=prefix_rft", "rollout.n=4", *overrides)
    batch = make_batch(PROMPT, RESP, GROUP, prefix_len=PREFIX, old=old)
    batch = advantages(algo, batch, outcome_rewards(batch, REWARD), ENT)
    return update(batch, algo.terms(0), LP)


def test_defaults_equal_the_paper():
    loss, grad, _, _ = run()  # Dr.GRPO, (prompt, prefix) groups, top 20% prefix entropy
    ref_loss, ref_grad, _ = reference(reference_advantages(0.2))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-12,
                               atol=1e-15)


def test_the_prefix_learns_what_its_continuations_earn():
    """d loss / d log p of the shared prefix tokens, summed over the samples that
    share them: -(mean prefixed reward - mean plain reward) / tokens. Before,
    the prefixed samples' own group made it exactly 0."""
    loss, grad, _, _ = run("algo.prefix.entropy_top_frac=1.0")
    n = sum(RESP)
    shared = [(2, 2), (2, 3)]  # prompt 5's prefix positions (rows 2 and 3 share them)
    push = [float(grad[b, t] + grad[b + 1, t - 1]) for b, t in shared]  # row 3 starts 1 earlier
    # prompt 5: prefixed mean 1.0, plain mean 0.5 -> a negative gradient, a push up
    assert push == pytest.approx([-(1.0 - 0.5) / n] * 2, rel=1e-12)
    before = reference(reference_advantages(1.0, credit=False))[1]
    assert [before[b][t] + before[b + 1][t - 1] for b, t in shared] == [0.0, 0.0]
    # prompt 9's lone prefixed sample beat both plain ones: (1 - 0) / 1 on each of its 3
    assert grad[6, 1:4].tolist() == pytest.approx([-1.0 / n] * 3, rel=1e-12)
    worse = list(REWARD)
    worse[6] = -1.0  # a prefix whose continuation does worse is pushed down
    assert reference(reference_advantages(1.0, worse))[1][6][1] == pytest.approx(1.0 / n)


def test_split_terms_take_the_joint_per_row_mean_and_clip_frac():
    loss, grad, _, stats = run("algo.loss_agg=seq_mean_token_mean", "algo.prefix.clip_low=0.1",
                               "algo.prefix.clip_high=0.1", "algo.prefix.entropy_top_frac=1.0",
                               old=OLD)
    adv = reference_advantages(1.0)
    ref_loss, ref_grad, clipped = reference(adv, OLD, "seq_mean_token_mean",
                                            prefix_clip=(0.1, 0.1))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-12,
                               atol=1e-15)
    n_prefix = sum(PREFIX)
    assert clipped["prefix"] > 0 and clipped["sampled"] > 0
    assert stats.metrics["ppo_clip#0/clip_frac"] == pytest.approx(
        clipped["sampled"] / (sum(RESP) - n_prefix))
    assert stats.metrics["ppo_clip#1/clip_frac"] == pytest.approx(clipped["prefix"] / n_prefix)
    # the step's headline: every clipped token over every token of the two terms
    assert stats.metrics["clip_frac"] == pytest.approx(
        (clipped["sampled"] + clipped["prefix"]) / sum(RESP))
