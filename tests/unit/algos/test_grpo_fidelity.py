"""GRPO family (GRPO, Dr.GRPO, RLOO, REINFORCE++, REINFORCE++-baseline, DAPO)
and the rollout correction (TIS / MIS): on a small hand-made batch, rlft's
loss and d loss / d log p (torch autograd through the real loss driver) equal
plain-loop references written from the papers' equations."""

import math

import pytest
import torch
from fidelity import advantages, algorithm, make_batch, outcome_rewards, update

EPS = 1e-6
# Two groups (ids 7 and 3, interleaved, sizes 3 and 2); responses of 2-4 tokens.
PROMPT = [2, 1, 3, 2, 1]
RESP = [3, 2, 4, 2, 3]
GROUP = [7, 3, 7, 7, 3]
REWARD = [1.0, 0.0, 0.5, 0.0, 1.0]
L = 7


def grid(seed, lo=-2.0, hi=-0.1):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(len(RESP), L, generator=g, dtype=torch.float64)).tolist()


LP, OLD, REF = grid(1), grid(2), grid(3)
LP[0][2] = OLD[0][2] + math.log(1.25)  # A > 0: clipped at 1.2, free under clip-higher 0.28


def tokens(b):
    return range(PROMPT[b], PROMPT[b] + RESP[b])


def group_adv(kind, rewards, groups=GROUP):
    """Outcome advantage per row, from the estimator's equation."""
    out = []
    for i, r in enumerate(rewards):
        mates = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        n = len(mates)
        mean = sum(mates) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in mates) / (n - 1))
        out.append({"grpo": (r - mean) / (std + EPS), "dr_grpo": r - mean,
                    "rloo": r - (sum(mates) - r) / (n - 1)}[kind])
    return out


def ppo_token(lp, old, a, lo=0.2, hi=0.2):
    """(-A r clipped, its derivative in log p): PPO's surrogate, one token."""
    r = math.exp(lp - old)
    s1, s2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
    return (s1, -a * r) if s1 >= s2 else (s2, 0.0)


def reference(adv, agg="token_mean", rows=None, kl=0.0, norm=4.0, weight=None, lo=0.2, hi=0.2):
    """(loss, grad [B][L]) of PPO-clip (+ kl * k3) aggregated by `agg`.
    `adv[b][t]` per token, `weight[b][t]` a rollout-correction factor."""
    rows = range(len(RESP)) if rows is None else rows
    n_tok = sum(RESP[b] for b in rows)
    loss, grad = 0.0, [[0.0] * L for _ in RESP]
    for b in rows:
        for t in tokens(b):
            f, g = ppo_token(LP[b][t], OLD[b][t], adv[b][t], lo, hi)
            w = 1.0 if weight is None else weight[b][t]
            f, g = w * f, w * g
            d = REF[b][t] - LP[b][t]  # k3 = e^d - 1 - d, d/d lp = 1 - e^d
            f, g = f + kl * (math.exp(d) - 1 - d), g + kl * (1 - math.exp(d))
            scale = {"token_mean": 1 / n_tok, "seq_mean_token_mean": 1 / (len(rows) * RESP[b]),
                     "seq_mean_token_sum_norm": 1 / (len(rows) * norm)}[agg]
            loss += scale * f
            grad[b][t] = scale * g
    return loss, grad


def per_token(row_adv):
    return [[row_adv[b] if t in tokens(b) else 0.0 for t in range(L)] for b in range(len(RESP))]


def check(algo, batch, ref_loss, ref_grad, rewards=None, entropy=None):
    batch = advantages(algo, batch, outcome_rewards(batch, rewards or REWARD), entropy)
    loss, grad, _, stats = update(batch, algo.terms(0), LP)
    assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    return stats


@pytest.mark.parametrize("kind,agg", [("grpo", "token_mean"),
                                      ("dr_grpo", "seq_mean_token_sum_norm"),
                                      ("rloo", "seq_mean_token_mean")])
def test_group_estimators_with_ppo_clip_and_kl_loss(kind, agg):
    algo = algorithm(f"algo.advantage={kind}", f"algo.loss_agg={agg}", "algo.kl_coef=0.1",
                     "rollout.max_new_tokens=4")
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, ref=REF)
    ref_loss, ref_grad = reference(per_token(group_adv(kind, REWARD)), agg, kl=0.1)
    check(algo, batch, ref_loss, ref_grad)


def _reinforce_tokens(beta, baseline):
    """REINFORCE++ advantages from their equations: token rewards r_t = -beta *
    (log pi_old - log pi_ref) plus the outcome on the last token; REINFORCE++:
    return-to-go (gamma 1), REINFORCE++-baseline: the sequence's sum minus its
    group mean; then whitened over all response tokens (unbiased std)."""
    raw = [[0.0] * L for _ in RESP]
    for b in range(len(RESP)):
        r = {t: -beta * (OLD[b][t] - REF[b][t]) for t in tokens(b)}
        r[max(tokens(b))] += REWARD[b]
        if baseline:
            total = [sum(-beta * (OLD[j][t] - REF[j][t]) for t in tokens(j)) + REWARD[j]
                     for j in range(len(RESP))]
            mates = [total[j] for j in range(len(RESP)) if GROUP[j] == GROUP[b]]
            for t in tokens(b):
                raw[b][t] = total[b] - sum(mates) / len(mates)
        else:
            for t in tokens(b):
                raw[b][t] = sum(r[k] for k in tokens(b) if k >= t)
    flat = [raw[b][t] for b in range(len(RESP)) for t in tokens(b)]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1))
    return [[(raw[b][t] - mean) / (std + EPS) if t in tokens(b) else 0.0 for t in range(L)]
            for b in range(len(RESP))]


@pytest.mark.parametrize("kind", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_with_k1_kl_in_the_reward(kind):
    algo = algorithm(f"algo.advantage={kind}", "algo.kl_coef=0.05", "algo.kl_in_reward=true")
    assert [t.loss for t in algo.terms(0)] == ["ppo_clip"]  # the KL acts through the reward
    assert {"old_logprobs", "ref_logprobs"} <= algo.needs
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, ref=REF)
    ref_loss, ref_grad = reference(_reinforce_tokens(0.05, kind == "reinforce_pp_baseline"))
    check(algo, batch, ref_loss, ref_grad)


def test_dapo_clip_higher_overlong_punishment_and_filtering():
    # max_new_tokens 4, buffer 2: 3 tokens lose 0.5, 4 tokens (row 2, cut at the cap) lose 1
    # and leave the loss, though their reward still counts in their group's baseline.
    algo = algorithm("algo.clip_high=0.28", "algo.filter_groups=true", "rollout.max_new_tokens=4",
                     "algo.overlong_buffer=2", "algo.filter_truncated=true")
    truncated = [False, False, True, False, False]
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, truncated=truncated)
    shaped = [r - max(0.0, min(1.0, (n - 2) / 2)) for r, n in zip(REWARD, RESP)]
    assert shaped == [0.5, 0.0, -0.5, 0.0, 0.5]
    kept = [b for b in range(len(RESP)) if not truncated[b]]
    ref_loss, ref_grad = reference(per_token(group_adv("grpo", shaped)), rows=kept, hi=0.28)
    check(algo, batch, ref_loss, ref_grad)
    assert ref_grad[0][2] != 0.0  # the ratio-1.25 token trains under clip-higher
    assert reference(per_token(group_adv("grpo", shaped)), rows=kept)[1][0][2] == 0.0


def test_clip_higher_binds_only_off_the_first_update():
    # On the first update of a batch (no old_logprobs) the ratio is 1 and no clip binds.
    algo = algorithm("algo.clip_high=0.28")
    batch = advantages(algo, make_batch(PROMPT, RESP, GROUP), outcome_rewards(
        make_batch(PROMPT, RESP, GROUP), REWARD))
    _, _, _, stats = update(batch, algo.terms(0), LP)
    assert stats.metrics["clip_frac"] == 0.0


@pytest.mark.parametrize("mode,level", [("tis", "token"), ("tis", "sequence"),
                                        ("mis", "token"), ("mis", "sequence")])
def test_rollout_correction_against_a_perturbed_rollout(mode, level):
    """The engine's distribution is deliberately off: log pi_rollout = log pi_old
    + delta. The corrected gradient is the hand-computed weighted one."""
    g = torch.Generator().manual_seed(9)
    delta = (torch.randn(len(RESP), L, generator=g, dtype=torch.float64) * 0.6).tolist()
    rollout = [[OLD[b][t] + delta[b][t] for t in range(L)] for b in range(len(RESP))]
    algo = algorithm(f"algo.rollout_is.mode={mode}", f"algo.rollout_is.level={level}",
                     "algo.rollout_is.cap=1.5", "algo.rollout_is.low=0.6",
                     "algo.rollout_is.high=1.7")
    weight = [[1.0] * L for _ in RESP]
    for b in range(len(RESP)):
        if level == "sequence":
            w_seq = math.exp(sum(OLD[b][t] - rollout[b][t] for t in tokens(b)))
        for t in tokens(b):
            w = w_seq if level == "sequence" else math.exp(OLD[b][t] - rollout[b][t])
            weight[b][t] = min(w, 1.5) if mode == "tis" else float(0.6 <= w <= 1.7)
    assert any(w not in (0.0, 1.0) for row in weight for w in row) or mode == "mis"
    assert any(w == 0.0 for row in weight for w in row) or mode == "tis"
    batch = make_batch(PROMPT, RESP, GROUP, old=OLD, rollout=rollout)
    ref_loss, ref_grad = reference(per_token(group_adv("grpo", REWARD)), weight=weight)
    stats = check(algo, batch, ref_loss, ref_grad)
    n = sum(RESP)
    mean_w = sum(weight[b][t] for b in range(len(RESP)) for t in tokens(b)) / n
    # The metric is a float32 token sum (the driver's metrics), whose rounding
    # depends on the CPU's summation order: 14 weights <= 1.5 err by <= 14 eps relative.
    assert stats.metrics["ppo_clip/is_weight"] == pytest.approx(
        mean_w, rel=100 * torch.finfo(torch.float32).eps)
