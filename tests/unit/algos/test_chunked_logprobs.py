"""Chunked log-probs/entropy equal the naive full-logits computation, values and
gradients, and keep no [N, V] tensor for backward."""

import math

import pytest
import torch
from tolerances import fp32_bound

from rlft.algos.logprobs import logprobs_from_hidden, logprobs_from_logits

N, H, V = 37, 16, 503  # chunk sizes below do not divide N


def case(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype) * 2
    weight = torch.randn(V, H, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    g_lp, g_ent = (torch.randn(N, generator=g, dtype=dtype) for _ in range(2))
    return hidden, weight, labels, g_lp, g_ent


def test_logits_reference_matches_loop():
    hidden, weight, labels, _, _ = case()
    logits = (hidden @ weight.T).double()
    lp, ent = logprobs_from_logits(logits, labels)
    for n in range(0, N, 5):
        row = logits[n].tolist()
        lse = math.log(sum(math.exp(z) for z in row))
        assert lp[n].item() == pytest.approx(row[labels[n]] - lse, abs=1e-5)
        assert ent[n].item() == pytest.approx(-sum(math.exp(z - lse) * (z - lse) for z in row),
                                              abs=1e-5)


def grads(fn, hidden, weight, labels, g_lp, g_ent):
    """Values and d(g_lp . lp + g_ent . ent)/d(hidden, weight); None weights skip a term."""
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp, ent = fn(h, w, labels)
    total = torch.zeros(())
    if g_lp is not None:
        total = total + (g_lp * lp).sum()
    if g_ent is not None:
        total = total + (g_ent * ent).sum()
    total.backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def naive(h, w, labels):
    return logprobs_from_logits(h @ w.T, labels)


@pytest.mark.parametrize("chunk", [1, 8, 37, 1024])
@pytest.mark.parametrize("use", ["both", "logprobs", "entropy"])
def test_chunked_equals_naive_values_and_gradients(chunk, use):
    # In float64: the chunked and naive paths sum in different orders, which in
    # float32 moves a gradient entry by ~1e-5 depending on the CPU's kernels
    # (issue #25). In float64 that rounding is ~1e-13, so a 1e-10 bound still
    # tests the maths (a wrong formula is off by O(1)) and no CPU can flip it.
    hidden, weight, labels, g_lp, g_ent = case(chunk, torch.float64)
    g_lp = None if use == "entropy" else g_lp
    g_ent = None if use == "logprobs" else g_ent
    ours = grads(lambda h, w, y: logprobs_from_hidden(h, w, y, chunk=chunk),
                 hidden, weight, labels, g_lp, g_ent)
    ref = grads(naive, hidden, weight, labels, g_lp, g_ent)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# fp32_bound: each output here sums at most V=503 terms (softmax, entropy) or N=37
# rows (the head's gradient), each no larger than the output's largest entry.
@pytest.mark.parametrize("chunk", [1, 8, 1024])
def test_float32_paths_are_within_rounding_of_float64(chunk):
    hidden, weight, labels, g_lp, g_ent = case(chunk)
    chunked = grads(lambda h, w, y: logprobs_from_hidden(h, w, y, chunk=chunk),
                    hidden, weight, labels, g_lp, g_ent)
    ref = grads(naive, *(t.double() if t.is_floating_point() else t
                         for t in (hidden, weight, labels, g_lp, g_ent)))
    for ours, exact in zip(chunked, ref):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), exact, rtol=0, atol=fp32_bound(exact))


def test_without_entropy_and_with_a_frozen_head():
    hidden, weight, labels, g_lp, _ = case(3)
    h = hidden.clone().requires_grad_(True)
    lp, ent = logprobs_from_hidden(h, weight, labels, chunk=10, with_entropy=False)
    assert ent is None
    (g_lp * lp).sum().backward()
    _, _, h_ref, _ = grads(naive, hidden, weight, labels, g_lp, None)
    torch.testing.assert_close(h.grad, h_ref, atol=fp32_bound(h_ref), rtol=0)


def saved_shapes(fn):
    """Shapes of every tensor autograd saves for backward while `fn` runs."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_no_full_logits_saved_for_backward():
    hidden, weight, labels, _, _ = case()
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    ours = saved_shapes(lambda: logprobs_from_hidden(h, w, labels, chunk=8))
    assert ours and all(math.prod(s) < N * V for s in ours), ours
    # The check can fail: the naive path keeps [N, V] tensors alive.
    assert (N, V) in saved_shapes(lambda: naive(h, w, labels))


def test_bf16_inputs_give_fp32_outputs_close_to_fp32():
    hidden, weight, labels, g_lp, g_ent = case(4)
    lp16, ent16, h16, w16 = grads(lambda h, w, y: logprobs_from_hidden(h, w, y, chunk=8),
                                  hidden.bfloat16(), weight.bfloat16(), labels, g_lp, g_ent)
    lp, ent, _, _ = grads(naive, hidden.bfloat16().float(), weight.bfloat16().float(), labels,
                          g_lp, g_ent)
    assert lp16.dtype == torch.float32 and h16.dtype == torch.bfloat16
    assert w16.dtype == torch.bfloat16 and torch.isfinite(w16.float()).all()
    # bf16 matmul rounding of logits of size ~10 costs about 0.1 in log-prob.
    torch.testing.assert_close(lp16, lp, atol=0.3, rtol=0.05)
    torch.testing.assert_close(ent16, ent, atol=0.3, rtol=0.05)


def test_errors_name_the_inputs():
    hidden, weight, labels, _, _ = case()
    with pytest.raises(ValueError, match="disagree"):
        logprobs_from_hidden(hidden, weight[:, :5], labels)
    with pytest.raises(ValueError, match="dtype"):
        logprobs_from_hidden(hidden, weight.double(), labels)
    with pytest.raises(ValueError, match="chunk"):
        logprobs_from_hidden(hidden, weight, labels, chunk=0)
