"""Sequence packing: micro-batches without padding.

A packed micro-batch is one row: its sequences' real tokens back to back, with
`position_ids` restarting at 0 for each sequence and attention confined to
each sequence (block-diagonal causal). The model then sees exactly what it
sees in a right-padded batch, so per-token log-probs are the same, while no
FLOP or activation byte is spent on padding and a micro-batch is sized by its
real tokens.

Attention runs through `varlen_attention`, registered with transformers under
the name `ATTENTION`:
- CUDA, bf16/fp16: `torch.nn.attention.varlen.varlen_attn` (FlashAttention's
  varlen kernel inside torch: no flash-attn wheel needed);
- otherwise (CPU, fp32): one SDPA call per sequence. Exact, and O(sum n_i^2)
  rather than the O(T^2) of a dense block-diagonal mask.
Calls without packing kwargs (a padded batch) fall through to transformers'
SDPA with its usual padding mask, so one model serves both layouts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "rlft_varlen"


def pack_rows(lengths: list[int], token_budget: int) -> list[list[int]]:
    """First-fit decreasing: row indices grouped into micro-batches of at most
    `token_budget` real tokens, each group longest row first (a row longer than
    the budget goes alone; rows are never split).

    >>> pack_rows([3, 7, 5, 2], 10)
    [[1, 0], [2, 3]]
    """
    if token_budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1; got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])  # stable
    bins: list[list[int]] = []
    room: list[int] = []
    for r in order:
        fit = next((i for i, free in enumerate(room) if lengths[r] <= free), None)
        if fit is None:
            bins.append([r])
            room.append(token_budget - lengths[r])
        else:
            bins[fit].append(r)
            room[fit] -= lengths[r]
    return bins


@dataclass(frozen=True)
class Packed:
    """One packed row and what attention needs to keep its sequences apart."""

    input_ids: torch.Tensor  # [1, T] real tokens of every row, back to back
    position_ids: torch.Tensor  # [1, T] 0..n_i-1 per row
    cu_seqlens: torch.Tensor  # [n+1] int32 starts of each row in the packed one, then T
    longest: int

    def attention_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that transformers forwards to the attention function
        (the flash-attention names, so `flash_attention_2` understands them too)."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                "max_length_q": self.longest, "max_length_k": self.longest}


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packed:
    """[b, L] right-padded ids and mask -> one packed row."""
    am = attention_mask.bool()
    lengths = tuple(int(n) for n in am.sum(-1).tolist())
    if min(lengths, default=0) < 1:
        raise ValueError(f"pack: every row needs at least one token; lengths {lengths}")
    cols = torch.arange(am.shape[1], device=am.device).expand(am.shape)  # [b, L]
    position_ids = cols[am][None]  # [1, T]: row-major, so each row restarts at 0
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return Packed(input_ids=input_ids[am][None], position_ids=position_ids,
                  cu_seqlens=cu.to(input_ids.device), longest=max(lengths))


try:  # looked up once here, outside any torch.compile trace
    from torch.nn.attention.varlen import varlen_attn as _VARLEN
    _VARLEN_ARGS = frozenset(inspect.signature(_VARLEN).parameters)
except ImportError:  # torch < 2.9
    _VARLEN, _VARLEN_ARGS = None, frozenset()


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                  longest: int, scaling: float) -> torch.Tensor:
    """[T, Hq, D], [T, Hkv, D] x2 -> [T, Hq, D] through torch's varlen kernel.

    Its keyword set changed across torch releases (is_causal -> window_size,
    scale and enable_gqa added later), so the call is built from its signature.
    """
    names = _VARLEN_ARGS
    kw: dict[str, Any] = {}
    if "is_causal" in names:
        kw["is_causal"] = True
    elif "window_size" in names:
        kw["window_size"] = (-1, 0)  # (left, right): causal
    else:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn takes neither is_causal nor "
                           "window_size; set train.packing=false")
    if "scale" in names:
        kw["scale"] = scaling
    elif abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
        raise RuntimeError(f"this torch's varlen_attn has no scale argument and the model's "
                           f"attention scale {scaling} is not 1/sqrt(head_dim); set "
                           "train.packing=false")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in names:
            kw["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [T, Hq, D]
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return _VARLEN(q, k, v, cu, cu, longest, longest, **kw)


@torch.compiler.disable  # a Python loop over this micro-batch's lengths: no graph to keep
def _per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                  scaling: float) -> torch.Tensor:
    """[1, Hq, T, D], [1, Hkv, T, D] x2 -> [1, Hq, T, D]: causal SDPA on each sequence."""
    gqa = q.shape[1] != k.shape[1]
    outs, start = [], 0
    for n in cu.diff().tolist():  # a device sync on CUDA: this is the fp32 fallback
        s = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[:, :, s], k[:, :, s], v[:, :, s],
                                                   is_causal=True, scale=scaling, enable_gqa=gqa))
        start += n
    return torch.cat(outs, dim=2)


def varlen_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, **kwargs: Any
                     ) -> tuple[torch.Tensor, None]:
    """transformers attention function: packed when the packing kwargs are present."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    if sliding_window is not None or dropout:
        raise ValueError(f"packed attention supports neither sliding windows nor attention "
                         f"dropout (sliding_window={sliding_window}, dropout={dropout}); set "
                         "train.packing=false")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    # query [1, Hq, T, D], key/value [1, Hkv, T, D]; transformers wants [1, T, Hq, D] back.
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and _VARLEN is not None:
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
        out = _flash_varlen(q, k, v, cu, kwargs["max_length_q"], scaling)
        return out[None], None  # [1, T, Hq, D]
    out = _per_sequence(query, key, value, cu, scaling)  # [1, Hq, T, D]
    return out.transpose(1, 2).contiguous(), None


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any
          ) -> torch.Tensor | None:
    """No dense mask for packed calls (attention_mask None); SDPA's mask otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def use_packed_attention(lm: nn.Module) -> None:
    """Register `varlen_attention` with transformers and switch `lm` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, varlen_attention)
    AttentionMaskInterface.register(ATTENTION, _mask)
    if not hasattr(lm, "set_attn_implementation"):
        raise TypeError(f"packing needs a transformers model; {type(lm).__name__} has no "
                        "set_attn_implementation (set train.packing=false)")
    lm.set_attn_implementation(ATTENTION)
