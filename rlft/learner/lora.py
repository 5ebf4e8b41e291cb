"""LoRA for the learner, through `peft`: wrapping, merging, adapter export.

The learner trains the adapters only; everything outside it (rollout engines,
HF export) sees plain merged weights under the base model's own names, so no
engine needs peft. Merging happens on the gathered full state dict (rank 0,
CPU), with the same arithmetic as peft's `merge_and_unload`:
W' = W + (B @ A) * scaling, with B @ A transposed for fan-in-fan-out layers
(GPT-2's Conv1D).

Names: the learner wraps the *ForCausalLM in place and keeps it as its root,
so its state dict reads `model.layers.0.self_attn.q_proj.base_layer.weight`
and `...q_proj.lora_A.default.weight`; a PeftModel's own state dict adds
`base_model.model.` in front. `base_name` undoes both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name; the learner trains exactly one
PEFT_PREFIX = "base_model.model."
Named = tuple[str, torch.Tensor]


@dataclass(frozen=True)
class LoraParams:
    r: int = 0  # adapter rank; 0 = LoRA off (full fine-tuning)
    alpha: float = 16.0  # scaling = alpha / r
    dropout: float = 0.0  # on the adapter input, while training only
    target_modules: tuple[str, ...] = ()  # module names; () = every linear layer but lm_head

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraParams: need r >= 0 (model.lora.r), alpha > 0 "
                             f"(model.lora.alpha) and 0 <= dropout < 1 (model.lora.dropout); "
                             f"got {self}")
        if not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"LoraParams.target_modules (model.lora.target_modules) must be "
                             f"module names such as q_proj; got {self.target_modules!r}")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def tag(self) -> str:
        """What a checkpoint's tensors depend on (dropout does not change them)."""
        if not self.enabled:
            return "full"
        targets = ",".join(self.target_modules) or "all-linear"
        return f"lora r={self.r} alpha={self.alpha:g} targets={targets}"


def wrap(lm: nn.Module, params: LoraParams) -> nn.Module:
    """Inject adapters into `lm` in place (base weights frozen); returns the PeftModel.

    `lm` stays the module to run and shard: the PeftModel only adds the
    adapter switch (`disable_adapter`) and `save_pretrained`.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=list(params.target_modules) or "all-linear", bias="none")
    try:
        peft_model = get_peft_model(lm, config)
    except ValueError as exc:
        raise ValueError(f"model.lora.target_modules={list(params.target_modules)}: {exc}; name "
                         "linear layers of the decoder (e.g. q_proj, v_proj) or leave it empty "
                         "for all of them") from exc
    if peft_model.get_base_model() is not lm:
        raise TypeError("peft did not wrap the model in place; the learner needs it to")
    from peft.tuners.lora import Linear, LoraLayer

    # The learner reads lm_head.weight directly and merges linear adapters only.
    head = lm.get_output_embeddings()
    bad = [n for n, m in lm.named_modules()
           if isinstance(m, LoraLayer) and (m is head or not isinstance(m, Linear))]
    if bad:
        raise ValueError(f"model.lora.target_modules={list(params.target_modules)} puts "
                         f"adapters on {bad[:3]}; only linear layers of the decoder are "
                         "supported (not lm_head or embeddings)")
    return peft_model


def merge_specs(lm: nn.Module) -> dict[str, tuple[float, bool]]:
    """Module name -> (scaling, fan_in_fan_out) of every LoRA layer of `lm`."""
    from peft.tuners.lora import LoraLayer

    return {name: (float(m.scaling[ADAPTER]), bool(getattr(m, "fan_in_fan_out", False)))
            for name, m in lm.named_modules() if isinstance(m, LoraLayer)}


def base_name(name: str) -> str:
    """`base_model.model.x.q_proj.base_layer.weight` -> `x.q_proj.weight`."""
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def is_adapter(name: str) -> bool:
    return ".lora_" in name


@torch.no_grad()
def merged(named: Iterable[Named], specs: dict[str, tuple[float, bool]]) -> list[Named]:
    """Full weights with the adapters folded in, under the base model's names.

    `named` is a full (unsharded) state dict of the wrapped model; adapter
    tensors are consumed, not returned. Order follows `named`.
    """
    state = {name.removeprefix(PEFT_PREFIX): t for name, t in named}
    out: list[Named] = []
    for name, tensor in state.items():
        if is_adapter(name):
            continue
        module = name.removesuffix(".base_layer.weight")
        if module != name and module in specs:
            scaling, fan_in_fan_out = specs[module]
            a, b = (state.get(f"{module}.lora_{x}.{ADAPTER}.weight") for x in "AB")
            if a is None or b is None:
                raise KeyError(f"{module}: the state dict has its base weight but not both "
                               f"lora_A/lora_B.{ADAPTER}.weight; pass the full state dict")
            delta = b.to(tensor.dtype) @ a.to(tensor.dtype)  # [out, r] @ [r, in]
            tensor = tensor + (delta.T if fan_in_fan_out else delta) * scaling
        out.append((base_name(name), tensor))
    return out


def save_adapter(peft_model: nn.Module, named: Iterable[Named], path: str) -> None:
    """A `save_pretrained` adapter folder (adapter_config.json + weights), loadable
    with `PeftModel.from_pretrained(base, path)`. `named`: the full state dict,
    under the names of `peft_model.get_base_model()`."""
    adapters = {PEFT_PREFIX + n: t for n, t in named if is_adapter(n)}
    if not adapters:
        raise ValueError("save_adapter got no lora_* tensors; pass the full state dict of "
                         "the wrapped model")
    peft_model.save_pretrained(path, state_dict=adapters)
