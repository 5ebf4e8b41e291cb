"""Demonstrations as response token ids, for the algorithms and commands that
train on them (CHORD, Prefix-RFT, SFT).

A row with `demonstration_turns` (a multi-turn exchange as messages, e.g.
`builtin:tool_use`) is built as the turn loop builds a trajectory: each
assistant turn tokenized on its own and ended with EOS, then the chat
template's glue around the tool messages (`rlft.data.chat_glue.ChatGlue`),
with a model-token mask so tool results and glue carry no loss, exactly as in
the policy's own multi-turn samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rlft.data.chat_glue import ChatGlue
from rlft.data.prompts import encode_prompt_text
from rlft.types import Prompt


@dataclass(frozen=True)
class DemoTokens:
    """A demonstration's response tokens (EOS last) and, for a multi-turn one, which of
    them are the model's (empty: all of them, as in a single-turn demonstration)."""

    ids: tuple[int, ...]
    model_mask: tuple[bool, ...] = ()

    @property
    def prefix(self) -> tuple[int, ...]:
        """The tokens a policy may be forced with (Prefix-RFT): the first model turn,
        its EOS excluded, so the policy still ends the turn itself.

        >>> DemoTokens((5, 6, 0, 9, 9, 7, 0), (True, True, True, False, False, True, True)).prefix
        (5, 6)
        >>> DemoTokens((5, 6, 0)).prefix
        (5, 6)
        """
        n = self.model_mask.index(False) if False in self.model_mask else len(self.ids)
        return self.ids[:n - 1]


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
    _need_eos(tokenizer)
    joint = encode_prompt_text(tokenizer, prompt.text + demo)
    n = len(prompt.prompt_ids)
    if tuple(joint[:n]) == prompt.prompt_ids:
        ids = joint[n:]
    else:
        ids = tokenizer(demo, add_special_tokens=False)["input_ids"]
    return (*ids, tokenizer.eos_token_id)


def demonstration_tokens(prompt: Prompt, tokenizer: Any) -> DemoTokens:
    """`demonstration_turns` as model turns and masked tool turns when the row has them,
    else `demonstration` (`demonstration_ids`)."""
    turns = prompt.fields.get("demonstration_turns")
    if turns is None:
        return DemoTokens(demonstration_ids(prompt, tokenizer))
    _need_eos(tokenizer)
    glue = ChatGlue(tokenizer, prompt.fields.get("tools") or None)
    eos, end = tokenizer.eos_token_id, tokenizer.eos_token
    ids: list[int] = []
    mask: list[bool] = []
    waiting: list[dict] = []  # tool messages after the last model turn
    for m in _turns(prompt, turns):
        if m["role"] == "tool":
            waiting.append({"role": "tool", "name": m.get("name", ""), "content": m["content"]})
            continue
        if m["role"] == "user":  # a later user turn (rollout.env rows): masked, as tool results
            waiting.append({"role": "user", "content": m["content"]})
            continue
        if waiting:
            more = glue.message_ids(waiting, end)
            ids, mask, waiting = ids + more, mask + [False] * len(more), []
        said = [*tokenizer.encode(m["content"], add_special_tokens=False), eos]
        ids, mask = ids + said, mask + [True] * len(said)
    return DemoTokens(tuple(ids), tuple(mask))


def _turns(prompt: Prompt, turns: Any) -> list[dict]:
    """The row's `demonstration_turns` (JSON text or a list), checked: assistant, tool
    and user messages with text, starting and ending with the assistant, tool or user
    messages between any two assistant turns."""
    fix = ("give `demonstration_turns` as a JSON list of messages: an assistant turn, the "
           "tool messages for its calls (or the user's next turn), ..., the final assistant "
           "answer")
    try:
        turns = json.loads(turns) if isinstance(turns, str) else turns
    except json.JSONDecodeError as exc:
        raise ValueError(f"row {prompt.uid}: `demonstration_turns` is not JSON ({exc}); {fix}") \
            from exc
    ok = isinstance(turns, list) and bool(turns) and all(
        isinstance(m, dict) and m.get("role") in ("assistant", "tool", "user")
        and isinstance(m.get("content"), str) for m in turns)
    ok = ok and turns[0]["role"] == turns[-1]["role"] == "assistant" and not any(
        a["role"] == b["role"] == "assistant" for a, b in zip(turns, turns[1:]))
    if not ok:
        raise ValueError(f"row {prompt.uid}: bad `demonstration_turns` {str(turns)[:120]!r}; {fix}")
    return turns


def _need_eos(tokenizer: Any) -> None:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; demonstrations must end with one")


class Demonstrations:
    """A row's demonstration as response token ids (EOS last) and model-token mask, for
    specs that train on or prefix with demonstrations. The tokenizer loads on first
    use, so building the spec (config validation) stays cheap."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._tok: Any = None
        self._tokens: dict[str, DemoTokens] = {}

    def tokens(self, prompt: Prompt) -> DemoTokens:
        if prompt.uid not in self._tokens:
            if self._tok is None:
                from rlft.models import load_tokenizer  # transformers: on first use only

                self._tok = load_tokenizer(self.model_name)
            self._tokens[prompt.uid] = demonstration_tokens(prompt, self._tok)
        return self._tokens[prompt.uid]

    def ids(self, prompt: Prompt) -> tuple[int, ...]:
        return self.tokens(prompt).ids
