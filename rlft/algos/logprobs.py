"""Token log-probs and entropy without materialising [N, V] float logits.

`logprobs_from_hidden` walks the rows in chunks; each chunk's logits live only
inside that chunk (forward) and are recomputed in backward, so peak memory is
O(chunk * V) instead of O(N * V) — at V=152k and 64k tokens the full fp32
logits alone would be 39 GB.
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: log p(label) and entropy from full logits. [N, V], [N] -> [N], [N]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    picked = logp.gather(-1, labels[:, None]).squeeze(-1)  # [N]
    entropy = -(logp.exp() * logp).sum(-1)  # [N]
    return picked, entropy


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        n = hidden.shape[0]
        lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            logits = (hidden[s:s + chunk] @ weight.T).float()  # [c, V]
            lse = torch.logsumexp(logits, -1)  # [c]
            p = torch.softmax(logits, -1)
            lp[s:s + chunk] = logits.gather(-1, labels[s:s + chunk, None]).squeeze(-1) - lse
            ent[s:s + chunk] = lse - (p * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, labels)
        ctx.chunk = chunk
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, labels = ctx.saved_tensors
        g_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        g_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] \
            else None
        g_lp = torch.zeros(hidden.shape[0], device=hidden.device) if g_lp is None else g_lp
        g_ent = torch.zeros(hidden.shape[0], device=hidden.device) if g_ent is None else g_ent
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            logits = (h @ weight.T).float()  # [c, V] recomputed
            logp = torch.log_softmax(logits, -1)
            p = logp.exp()
            ent = -(p * logp).sum(-1, keepdim=True)  # [c, 1]
            # d lp/d z = onehot - p;  d H/d z = -p * (log p + H)
            grad = -p * g_lp[s:s + ctx.chunk, None]
            grad.scatter_add_(-1, labels[s:s + ctx.chunk, None], g_lp[s:s + ctx.chunk, None])
            grad -= p * (logp + ent) * g_ent[s:s + ctx.chunk, None]
            grad = grad.to(hidden.dtype)
            if g_hidden is not None:
                g_hidden[s:s + ctx.chunk] = grad @ weight
            if g_weight is not None:
                g_weight += (grad.T @ h).float()
        return g_hidden, None if g_weight is None else g_weight.to(weight.dtype), None, None


def logprobs_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                         labels: torch.Tensor, chunk: int = 1024, with_entropy: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) and entropy for rows of final hidden states. [N, H], [V, H], [N] -> [N], [N].

    Differentiable w.r.t. `hidden` and `lm_head_weight`; values and gradients
    equal `logprobs_from_logits(hidden @ W.T, labels)` in fp32.
    """
    lp, ent = _ChunkedLogprobs.apply(hidden, lm_head_weight, labels, max(1, chunk))
    return lp, (ent if with_entropy else None)
