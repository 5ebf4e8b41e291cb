"""Seeded, resumable batches of prompts."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from rlft.types import Prompt


class PromptSampler:
    """Endless epochs of seeded shuffles; `state_dict` makes resume exact.

    Epoch e is the permutation drawn by `random.Random(f"{seed}:{e}")`, so a
    sampler rebuilt from (epoch, position) replays exactly the same batches.
    A batch may span two epochs. `batch_size` may change across a resume.
    """

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int,
                 shuffle: bool = True) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        if batch_size < 1:
            raise ValueError(f"PromptSampler batch_size must be >= 1, got {batch_size}")
        self.prompts, self.batch_size = tuple(prompts), batch_size
        self.seed, self.shuffle = seed, shuffle
        self._epoch, self._position = 0, 0
        self._order = self._order_for(0)

    @property
    def epoch(self) -> int:
        """Epochs completed before the next prompt is drawn."""
        return self._epoch

    @property
    def position(self) -> int:
        """Prompts of the current epoch already drawn."""
        return self._position

    @property
    def drawn(self) -> int:
        """Prompts drawn so far over the whole run: the draw index of the next one.
        Draw g is prompt `prompt_at(g)`; a run's samples are named by it."""
        return self._epoch * len(self.prompts) + self._position

    def prompt_at(self, draw: int) -> Prompt:
        """The prompt of draw index `draw` (epoch draw // N, position draw % N).

        >>> from rlft.types import Prompt
        >>> s = PromptSampler([Prompt(str(i), "", ()) for i in range(3)], 2, seed=0)
        >>> [p.uid for p in s.next_batch() + s.next_batch()] == [
        ...     s.prompt_at(g).uid for g in range(4)]
        True
        """
        epoch, position = divmod(draw, len(self.prompts))
        order = self._order if epoch == self._epoch else self._order_for(epoch)
        return self.prompts[order[position]]

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            # A str seed is hashed with SHA-512, stable across runs and platforms.
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[Prompt]:
        out = []
        while len(out) < self.batch_size:
            if self._position >= len(self._order):
                self._epoch, self._position = self._epoch + 1, 0
                self._order = self._order_for(self._epoch)
            out.append(self.prompts[self._order[self._position]])
            self._position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "shuffle": self.shuffle, "num_prompts": len(self.prompts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`; the prompts, seed and shuffle must be the saved ones."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_prompts"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r} but this run has "
                    f"{key}={mine[key]!r}; resume with the same data.source, data.shuffle and "
                    f"train.seed, or start a new run")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self.prompts):
            raise ValueError(f"sampler state epoch={epoch}, position={position} is out of range "
                             f"for {len(self.prompts)} prompts")
        self._epoch, self._position = epoch, position
        self._order = self._order_for(epoch)
