"""The chat template's glue between a model turn and the next one, as token ids.

Shared by the turn loop (`rlft/workers/turns.py`, which appends it after each
model turn that called tools) and multi-turn demonstrations
(`rlft/data/demonstrations.py`, which build the same token sequence from a
row's `demonstration_turns`), so both train on the very tokens the template
writes, and neither re-tokenizes a model turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MARK = "\u2063rlft-turn-end\u2063"  # stands for the model's turn when the glue is rendered


class ChatGlue:
    """The template's text from the end of a model turn to the start of the next one.

    Rendered once per turn from a stand-in conversation (user, assistant =
    `MARK`, the tool messages, generation prompt) and cut after the mark: what
    follows is exactly what the template writes between the model's turn and
    its next turn, the tool messages included. The turn's own end token (EOS,
    when the model wrote it) is dropped from the glue's start.
    """

    def __init__(self, tok: Any, tools: list[dict] | None = None) -> None:
        self.tok, self.tools = tok, tools or None
        probe = self._render([])
        if MARK not in probe:
            raise ValueError("the tokenizer's chat template drops the assistant's text; the turn "
                             "loop needs a template that renders assistant messages")

    def _render(self, tool_messages: list[dict]) -> str:
        convo = [{"role": "user", "content": "?"}, {"role": "assistant", "content": MARK},
                 *tool_messages]
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True,
                                            **kwargs)

    def ids(self, results: Sequence[Any], turn_end: str) -> list[int]:
        """Token ids to append after a model turn whose last token reads `turn_end`;
        `results` have `.name` and `.content` (the tool runner's results)."""
        return self.message_ids([{"role": "tool", "name": r.name, "content": r.content}
                                 for r in results], turn_end)

    def message_ids(self, tool_messages: list[dict], turn_end: str) -> list[int]:
        """As `ids`, from tool messages ({"role": "tool", "name", "content"})."""
        text = self._render(tool_messages)
        glue = text[text.index(MARK) + len(MARK):]
        if turn_end and glue.startswith(turn_end):
            glue = glue[len(turn_end):]
        return self.tok.encode(glue, add_special_tokens=False)
