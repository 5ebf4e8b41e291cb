"""Demonstrations as response token ids, for the algorithms and commands that
train on them (CHORD, Prefix-RFT, SFT)."""

from __future__ import annotations

from typing import Any

from rlft.data.prompts import encode_prompt_text
from rlft.types import Prompt


def demonstration_ids(prompt: Prompt, tokenizer: Any) -> tuple[int, ...]:
    """The row's demonstration as response tokens after `prompt.prompt_ids`, plus EOS.

    It is tokenised together with the prompt text and the tail kept, so the
    ids are the ones a policy would emit after this prompt; should the joint
    encoding not start with `prompt_ids` (a merge across the boundary), the
    demonstration is tokenised alone.
    """
    demo = prompt.demonstration
    if not isinstance(demo, str) or not demo:
        raise ValueError(f"row {prompt.uid} has no `demonstration` (got {demo!r}); this "
                         f"algorithm needs one per row: use a builtin task or map a column to "
                         f"it with data.field_map (e.g. {{solution: demonstration}})")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; demonstrations must end with one")
    joint = encode_prompt_text(tokenizer, prompt.text + demo)
    n = len(prompt.prompt_ids)
    if tuple(joint[:n]) == prompt.prompt_ids:
        ids = joint[n:]
    else:
        ids = tokenizer(demo, add_special_tokens=False)["input_ids"]
    return (*ids, tokenizer.eos_token_id)


class Demonstrations:
    """A row's `demonstration` as response token ids (EOS last), for specs that
    train on or prefix with demonstrations. The tokenizer loads on first use,
    so building the spec (config validation) stays cheap."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._tok: Any = None
        self._ids: dict[str, tuple[int, ...]] = {}

    def ids(self, prompt: Prompt) -> tuple[int, ...]:
        if prompt.uid not in self._ids:
            if self._tok is None:
                from rlft.models import load_tokenizer  # transformers: on first use only

                self._tok = load_tokenizer(self.model_name)
            self._ids[prompt.uid] = demonstration_ids(prompt, self._tok)
        return self._ids[prompt.uid]
