"""Token log-probs and entropy without materialising [N, V] float logits.

`logprobs_from_hidden` walks the rows in chunks; each chunk's logits live only
inside that chunk (forward) and are recomputed in backward (as Liger's and
verl's fused kernels do), so peak memory is O(chunk * V) instead of O(N * V):
at V=152k and 64k tokens the full fp32 logits alone would be 39 GB, and
autograd through `log_softmax` would keep several such tensors alive.
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: log p(label) and entropy from full logits, in fp32 (fp64 stays fp64).

    [N, V], [N] -> [N], [N]. Materialises everything; use it for checks and
    small vocabularies, `logprobs_from_hidden` in training.
    """
    logp = torch.log_softmax(logits.to(_math_dtype(logits.dtype)), dim=-1)  # [N, V]
    picked = logp.gather(-1, labels[:, None]).squeeze(-1)  # [N, 1] -> [N]
    entropy = -(logp.exp() * logp).sum(-1)  # [N, V] -> [N]
    return picked, entropy


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax math is at least fp32; fp64 inputs keep fp64, so tests can compare
    # two summation orders at a bound far below fp32's rounding.
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # The matmul runs in the parameters' dtype (an fp32 copy of a bf16 [V, H]
    # head per chunk would cost more than the logits); softmax math is fp32+.
    return (h @ weight.T).to(_math_dtype(h.dtype))  # [c, H] @ [H, V] -> [c, V]


class _ChunkedLogprobs(torch.autograd.Function):
    """Saves only (hidden, weight, labels, lse, entropy); logits are recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, with_entropy):
        n, dt = hidden.shape[0], _math_dtype(hidden.dtype)
        lp = torch.empty(n, dtype=dt, device=hidden.device)  # [N]
        ent = torch.zeros(n, dtype=dt, device=hidden.device)  # [N]
        lse = torch.empty(n, dtype=dt, device=hidden.device)  # [N]
        for s in range(0, n, chunk):
            logits = _chunk_logits(hidden[s:s + chunk], weight)  # [c, V]
            c_lse = torch.logsumexp(logits, -1)  # [c]
            lse[s:s + chunk] = c_lse
            lp[s:s + chunk] = logits.gather(-1, labels[s:s + chunk, None]).squeeze(-1) - c_lse
            if with_entropy:
                logp = logits.sub_(c_lse[:, None])  # in place: logits are not needed again
                ent[s:s + chunk] = -torch.linalg.vecdot(logp.exp(), logp)  # [c, V] -> [c]
        ctx.save_for_backward(hidden, weight, labels, lse, ent)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)  # None for an unused output: skip its work
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, labels, lse, ent = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_hidden = torch.zeros_like(hidden) if want_h else None
        # fp32 accumulator: a bf16 sum over thousands of chunks would lose the small terms.
        g_weight = torch.zeros_like(weight, dtype=_math_dtype(weight.dtype)) if want_w else None
        if (g_lp is None and g_ent is None) or not (want_h or want_w):
            return g_hidden, g_weight, None, None, None
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = slice(s, s + ctx.chunk)
            h = hidden[e]
            logp = _chunk_logits(h, weight).sub_(lse[e, None])  # [c, V] recomputed log p
            p = logp.exp()  # [c, V]
            # d lp / d z = onehot(label) - p;  d H / d z = -p * (log p + H).
            # grad = -p * (g_lp + g_ent * (log p + H)) + onehot * g_lp, built in place.
            if g_ent is not None:
                grad = logp.add_(ent[e, None]).mul_(g_ent[e, None])
                if g_lp is not None:
                    grad.add_(g_lp[e, None])
                grad.mul_(p).neg_()
            else:
                grad = p.mul_(-g_lp[e, None])
            if g_lp is not None:
                grad.scatter_add_(-1, labels[e, None], g_lp[e, None])
            grad = grad.to(weight.dtype)
            if g_hidden is not None:
                g_hidden[e] = grad @ weight  # [c, V] @ [V, H] -> [c, H]
            if g_weight is not None:
                g_weight += (grad.T @ h).to(g_weight.dtype)  # [V, c] @ [c, H] -> [V, H]
        return g_hidden, None if g_weight is None else g_weight.to(weight.dtype), None, None, None


def logprobs_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                         labels: torch.Tensor, chunk: int = 1024, with_entropy: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) and entropy for rows of final hidden states, in fp32 (fp64 for fp64).

    [N, H], [V, H], [N] -> [N], [N] (entropy None when `with_entropy=False`).
    Differentiable w.r.t. `hidden` and `lm_head_weight` (gradients of both
    outputs); values and gradients equal
    `logprobs_from_logits(hidden @ lm_head_weight.T, labels)`, while at
    most one [chunk, V] block of logits (plus its probabilities) is alive.
    """
    if hidden.dim() != 2 or lm_head_weight.dim() != 2 or labels.dim() != 1:
        raise ValueError(f"logprobs_from_hidden wants hidden [N, H], lm_head_weight [V, H], "
                         f"labels [N]; got {tuple(hidden.shape)}, {tuple(lm_head_weight.shape)}, "
                         f"{tuple(labels.shape)}")
    if hidden.shape[1] != lm_head_weight.shape[1] or hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"logprobs_from_hidden: hidden {tuple(hidden.shape)}, lm_head_weight "
                         f"{tuple(lm_head_weight.shape)} and labels {tuple(labels.shape)} disagree")
    if hidden.dtype != lm_head_weight.dtype:
        raise ValueError(f"logprobs_from_hidden: hidden dtype {hidden.dtype} differs from "
                         f"lm_head_weight dtype {lm_head_weight.dtype}; cast one of them")
    if chunk < 1:
        raise ValueError(f"logprobs_from_hidden: chunk must be >= 1, got {chunk}")
    lp, ent = _ChunkedLogprobs.apply(hidden, lm_head_weight, labels, chunk, with_entropy)
    return lp, (ent if with_entropy else None)
