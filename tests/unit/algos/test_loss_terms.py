"""Loss terms: hand-worked values and gradients, loop references, missing inputs."""

import math
from dataclasses import replace

import pytest
import torch

import rlft.algos  # noqa: F401  (registration)
from rlft.algos.base import LOSSES, LossInputs
from rlft.algos.losses import kl_penalty


def inputs(lp, adv=None, **kw) -> LossInputs:
    lp = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    adv = torch.zeros_like(lp) if adv is None else torch.tensor(adv, dtype=torch.float64)
    kw = {k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()}
    return LossInputs(logprobs=lp, response_mask=torch.ones(lp.shape, dtype=torch.bool),
                      advantages=adv, **kw)


def grad_of(x: LossInputs, loss: torch.Tensor) -> list:
    loss.sum().backward()
    return x.logprobs.grad.tolist()


# -- ppo_clip ----------------------------------------------------------------

def test_ppo_clip_hand_worked():
    # token  ratio  A    surr1 = -A r   surr2 = -A clip(r, 0.8, 1.2)   loss          clipped
    # 0      1.5    +1   -1.5           -1.2                          -1.2           yes
    # 1      0.5    +1   -0.5           -0.8                          -0.5           no
    # 2      0.5    -1    0.5            0.8                           0.8           yes
    # 3      5.0    -1    5.0            1.2                           5 -> 3 (dual) dual
    # 4      1.1    -2    2.2            2.2                           2.2           no
    ratios = [1.5, 0.5, 0.5, 5.0, 1.1]
    old = [-1.0] * 5
    lp = [o + math.log(r) for o, r in zip(old, ratios)]
    x = inputs([lp], [[1, 1, -1, -1, -2]], old_logprobs=[old])
    out = LOSSES.get("ppo_clip")(x, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert out.loss.tolist() == [pytest.approx([-1.2, -0.5, 0.8, 3.0, 2.2])]
    assert out.metrics["clip_frac"].tolist() == [[1, 0, 1, 1, 0]]
    assert out.metrics["dual_clip_frac"].tolist() == [[0, 0, 0, 1, 0]]
    assert out.metrics["ratio"].tolist() == [pytest.approx(ratios)]
    # d(-A r)/d lp = -A r where unclipped; clipped tokens pass no gradient
    assert grad_of(x, out.loss) == [pytest.approx([0, -0.5, 0, 0, 2.2])]


def test_ppo_clip_higher_widens_only_the_upper_bound():
    # ratio 1.25, A = +1: eps_high 0.2 clips (loss -1.2), eps_high 0.28 does not (-1.25).
    # ratio 0.75, A = -1: eps_low 0.2 clips at 0.8 -> loss 0.8 in both.
    lp = [[math.log(1.25), math.log(0.75)]]
    x = inputs(lp, [[1, -1]], old_logprobs=[[0.0, 0.0]])
    low = LOSSES.get("ppo_clip")(x, clip_low=0.2, clip_high=0.2).loss
    high = LOSSES.get("ppo_clip")(x, clip_low=0.2, clip_high=0.28).loss
    assert low.tolist() == [pytest.approx([-1.2, 0.8])]
    assert high.tolist() == [pytest.approx([-1.25, 0.8])]


def test_ppo_clip_on_policy_is_the_policy_gradient():
    # No old_logprobs: ratio 1 in value, loss -A, gradient -A.
    x = inputs([[-0.3, -2.0]], [[0.5, -1.5]])
    out = LOSSES.get("ppo_clip")(x)
    assert out.loss.tolist() == [[-0.5, 1.5]]
    assert grad_of(x, out.loss) == [[-0.5, 1.5]]
    assert out.metrics["clip_frac"].sum() == 0 and out.metrics["approx_kl"].sum() == 0


def test_ppo_clip_rejects_bad_dual_clip():
    with pytest.raises(ValueError, match="dual_clip"):
        LOSSES.get("ppo_clip")(inputs([[0.0]]), dual_clip=0.5)


def ref_ppo(lp, old, a, lo, hi, c):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
    if c is not None and a < 0:
        loss = min(loss, -a * c)
    return loss


def test_ppo_clip_matches_loop():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(6, 9, generator=g, dtype=torch.float64) * 3
    old = lp + torch.randn(6, 9, generator=g, dtype=torch.float64) * 0.6
    adv = torch.randn(6, 9, generator=g, dtype=torch.float64)
    x = LossInputs(lp, torch.ones(6, 9, dtype=torch.bool), adv, old_logprobs=old)
    out = LOSSES.get("ppo_clip")(x, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    ref = [[ref_ppo(float(lp[b, t]), float(old[b, t]), float(adv[b, t]), 0.2, 0.28, 3.0)
            for t in range(9)] for b in range(6)]
    torch.testing.assert_close(out.loss, torch.tensor(ref, dtype=torch.float64))
    assert 0 < out.metrics["clip_frac"].mean() < 1  # the random case exercises both branches


# -- sft_ce, chord_expert ----------------------------------------------------------

def test_sft_ce_hand_worked():
    x = inputs([[math.log(0.5), -2.0]])
    out = LOSSES.get("sft_ce")(x)
    assert out.loss.tolist() == [pytest.approx([math.log(2), 2.0])]
    assert grad_of(x, out.loss) == [[-1, -1]]


def test_chord_expert_hand_worked():
    # p = 0.5: phi = 0.25, loss = -0.25 * ln 0.5 = 0.17329, grad = -phi = -0.25 (p detached)
    # p = 0.9: phi = 0.09, loss = -0.09 * ln 0.9 = 0.009482; with cutoff 0.8: weight 0
    # p = 0.8: equal to the cutoff, not above it: keeps phi = 0.16
    lp = [[math.log(0.5), math.log(0.9), math.log(0.8)]]
    x = inputs(lp)
    out = LOSSES.get("chord_expert")(x)
    assert out.loss.tolist() == [pytest.approx([0.25 * math.log(2), -0.09 * math.log(0.9),
                                                -0.16 * math.log(0.8)])]
    assert grad_of(x, out.loss) == [pytest.approx([-0.25, -0.09, -0.16])]
    cut = LOSSES.get("chord_expert")(inputs(lp), cutoff_prob=0.8)
    assert cut.metrics["phi"].tolist() == [pytest.approx([0.25, 0.0, 0.16])]
    plain = LOSSES.get("chord_expert")(inputs(lp), phi=False, cutoff_prob=0.8)
    assert plain.loss.tolist() == [pytest.approx([math.log(2), 0.0, -math.log(0.8)])]


# -- kl ----------------------------------------------------------------------

def test_kl_hand_worked():
    # log r = lp - ref = -1 - (-2) = 1: k1 = 1, k2 = 0.5, k3 = e^-1 - 1 + 1 = 0.36788
    for est, want in (("k1", 1.0), ("k2", 0.5), ("k3", math.exp(-1))):
        out = LOSSES.get("kl")(inputs([[-1.0]], ref_logprobs=[[-2.0]]), estimator=est)
        assert out.loss.item() == pytest.approx(want)
        assert out.metrics["kl"].item() == pytest.approx(want)


def test_kl_sign_convention_is_kl_pi_to_ref():
    # Exact expectation over x ~ pi of k1 and k3 equals KL(pi || ref) = sum pi log(pi / ref);
    # the reverse direction KL(ref || pi) differs for these distributions.
    pi = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    ref = torch.tensor([0.1, 0.3, 0.3, 0.3], dtype=torch.float64)
    kl_true = float((pi * (pi / ref).log()).sum())
    assert abs(kl_true - float((ref * (ref / pi).log()).sum())) > 0.1
    for est in ("k1", "k3"):
        assert float((pi * kl_penalty(pi.log(), ref.log(), est)).sum()) == pytest.approx(kl_true)
    assert (kl_penalty(pi.log(), ref.log(), "k3") >= 0).all()


def test_kl_matches_loop_and_names_missing_reference():
    g = torch.Generator().manual_seed(1)
    lp, ref = -torch.rand(4, 7, generator=g) * 4, -torch.rand(4, 7, generator=g) * 4
    for est, f in (("k1", lambda d: d), ("k2", lambda d: d * d / 2),
                   ("k3", lambda d: math.exp(-d) - 1 + d)):
        want = [[f(float(lp[b, t]) - float(ref[b, t])) for t in range(7)] for b in range(4)]
        torch.testing.assert_close(kl_penalty(lp, ref, est), torch.tensor(want))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(lp, ref, "k4")
    with pytest.raises(ValueError, match="kl needs `ref_logprobs`"):
        LOSSES.get("kl")(inputs([[-1.0]]))


# -- value_clip, entropy_bonus ---------------------------------------------------------

def test_value_clip_hand_worked():
    # v  v_old  R   (v-R)^2   clip(v, v_old +- 0.2)  (vc-R)^2   loss = 0.5 * max
    # 1  0.5    2   1         0.7                    1.69       0.845 (clipped branch)
    # 1  0.9    0   1         1.0                    1          0.5
    # 2  1      3   1         1.2                    3.24       1.62  (clipped branch)
    v = torch.tensor([[1.0, 1.0, 2.0]], requires_grad=True)
    x = LossInputs(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3),
                   values=v, old_values=torch.tensor([[0.5, 0.9, 1.0]]),
                   returns=torch.tensor([[2.0, 0.0, 3.0]]))
    out = LOSSES.get("value_clip")(x, clip=0.2)
    assert out.loss.tolist() == [pytest.approx([0.845, 0.5, 1.62])]
    assert out.metrics["value_clip_frac"].tolist() == [[1, 0, 1]]
    out.loss.sum().backward()
    assert v.grad.tolist() == [pytest.approx([0.0, 1.0, 0.0])]  # (v - R) where unclipped
    plain = LOSSES.get("value_clip")(replace(x, old_values=None))
    assert plain.loss.tolist() == [pytest.approx([0.5, 0.5, 0.5])]


def test_value_clip_matches_loop_and_names_missing_fields():
    g = torch.Generator().manual_seed(2)
    v, old, ret = (torch.randn(3, 5, generator=g) for _ in range(3))
    x = LossInputs(torch.zeros(3, 5), torch.ones(3, 5, dtype=torch.bool), torch.zeros(3, 5),
                   values=v, old_values=old, returns=ret)
    want = [[0.5 * max((float(v[b, t]) - float(ret[b, t])) ** 2,
                       (float(old[b, t]) + min(max(float(v[b, t] - old[b, t]), -0.3), 0.3)
                        - float(ret[b, t])) ** 2) for t in range(5)] for b in range(3)]
    torch.testing.assert_close(LOSSES.get("value_clip")(x, clip=0.3).loss, torch.tensor(want))
    with pytest.raises(ValueError, match="value_clip needs `values`"):
        LOSSES.get("value_clip")(inputs([[0.0]], returns=[[1.0]]))
    with pytest.raises(ValueError, match="value_clip needs `returns`"):
        LOSSES.get("value_clip")(inputs([[0.0]], values=[[1.0]]))


def test_entropy_bonus():
    ent = torch.tensor([[0.5, 2.0]], requires_grad=True)
    out = LOSSES.get("entropy_bonus")(LossInputs(torch.zeros(1, 2), torch.ones(1, 2).bool(),
                                                 torch.zeros(1, 2), entropy=ent))
    assert out.loss.tolist() == [[-0.5, -2.0]]
    with pytest.raises(ValueError, match="entropy_bonus needs `entropy`"):
        LOSSES.get("entropy_bonus")(inputs([[0.0]]))


def test_simple_terms_match_loop():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(3, 6, generator=g) * 5
    x = LossInputs(lp, torch.ones(3, 6, dtype=torch.bool), torch.zeros(3, 6), entropy=-lp)
    for name, f in (("sft_ce", lambda v: -v),
                    ("chord_expert", lambda v: -math.exp(v) * (1 - math.exp(v)) * v),
                    ("entropy_bonus", lambda v: v)):
        want = [[f(float(lp[b, t])) for t in range(6)] for b in range(3)]
        torch.testing.assert_close(LOSSES.get(name)(x).loss, torch.tensor(want))


def test_registry_lists_every_term():
    assert {"ppo_clip", "sft_ce", "chord_expert", "kl", "value_clip",
            "entropy_bonus"} <= set(LOSSES.names())
