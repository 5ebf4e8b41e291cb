"""Rollout: the `RolloutEngine` protocol, the transformers engine, and the
thin `RolloutWorker` that the placement module turns into an actor.

Rollout log-probs are log_softmax of the model's raw logits (temperature 1,
before top-p), the same quantity the learner computes, so the two can be
compared token for token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from rlft.workers.weight_sync import WeightUpdate, iter_update

from rlft.registry import Registry
from rlft.types import PromptBatch, Rollouts


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None


class RolloutEngine(Protocol):
    policy_version: int

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts: ...
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def set_version(self, version: int) -> None: ...


ENGINES: Registry[Any] = Registry("rollout engine")


@dataclass(frozen=True)
class _Sample:
    request: int
    ids: list[int]  # prompt + forced prefix


@ENGINES.register("hf")
class HFEngine:
    """transformers `generate`, batched with left padding."""

    def __init__(self, model_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 seed: int = 0, max_batch: int = 64) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.model.eval()
        self.device, self.seed, self.max_batch = device, seed, max_batch
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None \
            else self.tok.eos_token_id
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        self.eos_ids.discard(None)
        self.policy_version = 0

    def set_version(self, version: int) -> None:
        self.policy_version = version

    @torch.inference_mode()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = self.model.state_dict()
        for name, tensor in weights:
            if name not in state:
                raise KeyError(f"weight {name!r} does not exist in the rollout model")
            state[name].copy_(tensor)

    @torch.inference_mode()
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        samples = [_Sample(i, list(p.prompt_ids) + list(batch.prefix_ids[i]))
                   for i, p in enumerate(batch.prompts) for _ in range(batch.n)]
        if params.seed is not None:
            torch.manual_seed(params.seed)
        results = []
        for s in range(0, len(samples), self.max_batch):
            results.extend(self._generate_chunk(samples[s:s + self.max_batch], params))
        prefix_lp = self._prefix_logprobs(batch)
        resp, lps, plen, fins = [], [], [], []
        for sample, (gen, gen_lp, finish) in zip(samples, results):
            prefix = list(batch.prefix_ids[sample.request])
            resp.append(tuple(prefix + gen))
            lps.append(tuple(prefix_lp.get(sample.request, []) + gen_lp))
            plen.append(len(prefix))
            fins.append(finish)
        return Rollouts(
            prompt_index=tuple(s.request for s in samples), prompts=batch.prompts,
            prompt_ids=tuple(tuple(batch.prompts[s.request].prompt_ids) for s in samples),
            response_ids=tuple(resp),
            response_text=tuple(self.tok.decode(r, skip_special_tokens=True) for r in resp),
            rollout_logprobs=tuple(lps), prefix_len=tuple(plen), finish_reason=tuple(fins),
            group_id=tuple(batch.group_id[s.request] for s in samples),
            policy_version=self.policy_version,
        )

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [B, P]
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate_chunk(self, samples: list[_Sample], params: SamplingParams):
        ids, mask = self._left_pad([s.ids for s in samples])
        greedy = params.temperature == 0
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None,
            stop_strings=list(params.stop) or None, tokenizer=self.tok if params.stop else None,
            pad_token_id=self.pad_id, output_logits=True, return_dict_in_generate=True,
        )
        gen = out.sequences[:, ids.shape[1]:]  # [B, T]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1)  # [B, T, V]
        picked = logp.gather(-1, gen[..., None]).squeeze(-1)  # [B, T]
        return [self._trim(gen[b].tolist(), picked[b].tolist(), params) for b in range(len(gen))]

    def _trim(self, tokens: list[int], lps: list[float], params: SamplingParams):
        """Cut at the first EOS (kept, so the policy learns to stop) or right
        after a stop string (transformers pads a stopped row with pad = EOS)."""
        end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
        if params.stop:
            text = self.tok.decode(tokens[:end], skip_special_tokens=True)
            if any(s in text for s in params.stop) and end < len(tokens):
                return tokens[:end], lps[:end], "stop"
        if end < len(tokens):
            return tokens[:end + 1], lps[:end + 1], "stop"
        return tokens, lps, "length"

    def _prefix_logprobs(self, batch: PromptBatch) -> dict[int, list[float]]:
        """Score forced prefixes with one forward pass (they were not sampled)."""
        todo = [i for i, p in enumerate(batch.prefix_ids) if p]
        if not todo:
            return {}
        rows = [list(batch.prompts[i].prompt_ids) + list(batch.prefix_ids[i]) for i in todo]
        ids, mask = self._left_pad(rows)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out = {}
        for b, i in enumerate(todo):
            k = len(batch.prefix_ids[i])
            out[i] = logp[b, -k:].tolist()
        return out


class RolloutWorker:
    """Thin worker: an engine plus the verbs the controller calls."""

    def __init__(self, engine: str = "hf", model_path: str = "", seed: int = 0,
                 **engine_kwargs: Any) -> None:
        if engine == "vllm":
            import rlft.workers.vllm_engine  # noqa: F401  (registers "vllm")
        self.engine = ENGINES.get(engine)(model_path, seed=seed, **engine_kwargs)

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        return self.engine.generate(batch, params)

    def load_weights(self, update: WeightUpdate) -> int:
        self.engine.load_weights(iter_update(update))
        self.engine.set_version(update.version)
        return update.version

    def policy_version(self) -> int:
        return self.engine.policy_version
