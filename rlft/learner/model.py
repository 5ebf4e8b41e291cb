"""The policy as the learner runs it: a causal LM wrapped to return per-token
log-probs and entropy, built from a name or a factory, optionally compiled."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from rlft.algos.logprobs import logprobs_from_hidden
from rlft.learner.packing import pack, use_packed_attention

ModelSource = str | Callable[[], nn.Module]  # a name/folder, or a factory (tests, custom models)


class PolicyLogprobs(nn.Module):
    """Causal LM -> per-token log-probs and entropy on selected positions.

    Runs the decoder body (`lm.model`), then `logprobs_from_hidden` on the final
    hidden states of the selected tokens only, so [tokens, V] float logits are
    never built whole. Log-probs are those of the sampling distribution,
    softmax(logits / temperature) (`temperature` = the rollout's; 1 = raw
    logits), the quantity the rollout engines report: ratio, KL, entropy and
    CHORD's p(1-p) are then taken under the distribution the samples came
    from, as verl does. Being one module lets FSDP2 shard it
    as the root: `lm_head` (tied to the embedding or not) is gathered by the
    root's forward hook like every other root parameter.
    """

    def __init__(self, lm: nn.Module, chunk: int, packed: bool = False,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"PolicyLogprobs temperature must be > 0 (greedy sampling scores "
                             f"at 1.0); got {temperature}")
        for attr in ("model", "lm_head"):
            if not hasattr(lm, attr):
                raise TypeError(f"the learner needs a Hugging Face *ForCausalLM with .model and "
                                f".lm_head; {type(lm).__name__} has no .{attr}")
        if not hasattr(lm.model, "layers"):
            raise TypeError(f"{type(lm).__name__}.model has no .layers (the decoder layers "
                            "FSDP2 shards one by one)")
        if packed:
            use_packed_attention(lm)
        self.lm, self.chunk, self.packed, self.temperature = lm, chunk, packed, temperature

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, L] ids, mask, selection -> [b, L] log-probs and entropy (0 where unselected).

        Packed or padded, the same tokens are scored from the same contexts; a
        selected position 0 is never scored (it has no previous token).
        """
        select = select.bool() & attention_mask.bool()
        select[:, 0] = False
        if self.packed:  # one row of real tokens: token t is predicted at t-1 of its row
            p = pack(input_ids, attention_mask)
            hidden = self.lm.model(input_ids=p.input_ids, position_ids=p.position_ids,
                                   use_cache=False, **p.attention_kwargs()
                                   ).last_hidden_state[0]  # [T, H]
            sel = select[attention_mask.bool()][1:]  # [T-1]; row starts are never selected
            h, labels = hidden[:-1][sel], p.input_ids[0, 1:][sel]  # [N, H], [N]
        else:
            hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask.long(),
                                   use_cache=False).last_hidden_state  # [b, L, H]
            sel = select[:, 1:]  # [b, L-1]; token t is predicted at position t-1
            h, labels = hidden[:, :-1][sel], input_ids[:, 1:][sel]  # [N, H], [N]
        if self.temperature != 1.0:  # (h / T) @ W.T = logits / T, without [N, V] logits
            h = h / self.temperature
        lp, ent = logprobs_from_hidden(h, self.lm.lm_head.weight, labels, self.chunk)  # [N], [N]
        zeros = torch.zeros(select.shape, dtype=lp.dtype, device=lp.device)  # [b, L]
        # Row-major order of the selected positions is the order of `lp` in both layouts.
        return zeros.masked_scatter(select, lp), zeros.masked_scatter(select, ent)  # [b, L]


def local_source(source: ModelSource | None) -> ModelSource | None:
    """A name resolved to a folder on this machine (rlft.models.resolve_model
    builds an alias here if needed); factories and None pass through."""
    if not isinstance(source, str):
        return source
    from rlft.models import resolve_model

    return resolve_model(source)


def build_model(source: ModelSource) -> nn.Module:
    """A causal LM in fp32 (the master weights) from a name/folder or a factory."""
    if callable(source):
        return source()
    from rlft.models import load_causal_lm

    return load_causal_lm(source, torch.float32)


def compile_layers(layers: Sequence[nn.Module]) -> None:
    """torch.compile each decoder layer's forward, in place.

    The forward, not the module call: FSDP2's gather/reshard hooks and
    activation checkpointing stay eager around the compiled body, and the
    state-dict names stay unprefixed (no `_orig_mod.`). Shapes change with
    every micro-batch, hence dynamic shapes from the start.
    """
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
