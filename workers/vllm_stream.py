"""Streaming requests on the vLLM engine: the episode loop's generation.

`LLM.generate` returns when its whole batch is done, so a trajectory whose
environment answers mid-call would wait for the slowest of that call.
A `Stream` instead adds requests to vLLM's engine as they come
(`LLMEngine.add_request`, as `LLM.generate` does inside) and runs it one
scheduler step at a time (`LLMEngine.step`): new requests join the running
batch at the next step (vLLM's continuous batching) and each finished one is
handed back at once. Requests and their results are the engine's own: the
same token-id prompts, sampling parameters and seeds (`request_params`), and
the same conversion to `Rollouts` (`rollouts`), so a request's tokens and
log-probs are what `generate` would give it.

A stream's requests must be done or cancelled before `generate` runs again
(`generate` refuses otherwise): `with engine.stream() as s:` cancels what is
left on the way out, an error included.
"""

from __future__ import annotations

from typing import Any

from rlft.types import PromptBatch, Rollouts
from rlft.workers.rollout import SamplingParams


class Stream:
    """Requests on a `VLLMEngine` that start and finish one at a time (module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.core = engine.llm.llm_engine
        self.running: dict[str, tuple[PromptBatch, int]] = {}  # request id -> (batch, index)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def submit(self, batch: PromptBatch, params: SamplingParams) -> list[str]:
        """Start one request per prompt of `batch`; their ids, in order."""
        from vllm.sampling_params import RequestOutputKind

        ids: list[str] = []
        try:
            for i, (ctx, sp) in enumerate(zip(self.engine.contexts(batch),
                                              self.engine.request_params(batch, params))):
                sp.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks
                rid = str(next(self.engine.llm.request_counter))  # unique beside LLM's own
                self.core.add_request(rid, {"prompt_token_ids": ctx}, sp)
                self.running[rid] = (batch, i)
                ids.append(rid)
        except BaseException:
            self.cancel(ids)
            raise
        return ids

    def poll(self) -> list[tuple[str, Rollouts]]:
        """One engine step; every request it finished, as Rollouts of its one prompt."""
        if not self.running:
            return []
        done = []
        for out in self.core.step():
            if out.finished and out.request_id in self.running:
                batch, i = self.running.pop(out.request_id)
                one = PromptBatch((batch.prompts[i],), (batch.prefix_ids[i],),
                                  (batch.group_id[i],), n=batch.n)
                done.append((out.request_id, self.engine.rollouts(one, [out])))
        return done

    def cancel(self, ids: list[str] | None = None) -> None:
        """Abort running requests (default: all of this stream's)."""
        ids = list(self.running) if ids is None else ids
        if ids:
            self.core.abort_request(ids)
            for rid in ids:
                self.running.pop(rid, None)
