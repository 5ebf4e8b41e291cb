"""Rollout: the `RolloutEngine` protocol, the transformers engine, and the
thin `RolloutWorker` that the placement module turns into an actor.

Choices every engine makes the same way (vLLM's included):
- Rollout log-probs are those of the sampling distribution at the sampled
  tokens, log_softmax(logits / temperature) (before top-p; temperature 0, i.e.
  greedy, scores at 1): the quantity the learner computes at the rollout's
  temperature, so the two compare token for token (`mismatch/*` metrics).
- A response ends at the first EOS (kept: the policy must learn to stop) or
  right after the token that completes a stop string (kept, for the same
  reason); finish_reason is then "stop", else "length".
- A forced prefix (`PromptBatch.prefix_ids`) is fed after the prompt, then
  sampling continues for up to `max_new_tokens` more tokens; the prefix is the
  first `prefix_len` tokens of the response, with its log-probs scored too.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rlft.algos.logprobs import logprobs_from_hidden
from rlft.envs.host import EnvSettings
from rlft.models import load_tokenizer, resolve_model
from rlft.registry import Registry
from rlft.types import PromptBatch, Rollouts
from rlft.workers.episodes import EnvTurns
from rlft.workers.tools import ToolSettings
from rlft.workers.turns import ToolTurns, TurnLimits
from rlft.workers.weight_sync import GROUPS, SyncGroup, WeightUpdate, iter_update


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 64  # sampled tokens, not counting a forced prefix
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: the engine's own stream (advances per call)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got "
                             f"{self.max_new_tokens}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"SamplingParams.stop must be a tuple of non-empty strings, "
                             f"got {self.stop!r}")


class RolloutEngine(Protocol):
    """What `RolloutWorker` needs from an engine (transformers here; vLLM's
    `LLM.generate` on token-id prompts and `load_weights` fit the same verbs).

    Optional, used where present: `sleep()` / `wake()` (free and restore
    accelerator memory around the learner phase), and `init_sync_group(host,
    port, rank, world, backend)` with `receive_broadcast(update)` for engines
    whose own worker processes receive "nccl" updates."""

    policy_version: int

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """`batch.n` samples per request, stamped with `policy_version`."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the engine's model."""
        ...

    def set_version(self, version: int) -> None: ...


ENGINES: Registry[Any] = Registry("rollout engine")
# Engines whose module registers them on import (heavy optional dependencies).
ENGINE_MODULES = {"vllm": "rlft.workers.vllm_engine"}


def _pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # [B, L]
    for b, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, cols] = torch.tensor(r, dtype=torch.long)
        mask[b, cols] = 1
    return ids, mask


def stop_hit(tok: Any, tokens: Sequence[int], stops: Sequence[str]) -> bool:
    """Does the last token of `tokens` complete a stop string (one that the
    text without that token does not contain)?

    Decodes only a window of trailing tokens: every token carries at least one
    byte, so a stop string of m bytes spans at most m tokens, and the window
    keeps two more so its first token (whose leading space some decoders drop,
    or whose bytes may be half a character) is never part of the match.
    """
    window = list(tokens[-(max(len(s.encode()) for s in stops) + 2):])
    now = tok.decode(window, skip_special_tokens=False)
    before = tok.decode(window[:-1], skip_special_tokens=False)
    return any(s in now and s not in before for s in stops)


def cut_response(tokens: Sequence[int], eos_ids: set[int], tok: Any, stops: Sequence[str]
                 ) -> tuple[int, str]:
    """(length, finish_reason) of one generated row: up to and including the
    first EOS or stop-string completion; the rest is padding."""
    for k, t in enumerate(tokens):
        if t in eos_ids or (stops and stop_hit(tok, tokens[:k + 1], stops)):
            return k + 1, "stop"
    return len(tokens), "length"


class _StopStrings(StoppingCriteria):
    """Stops a row on the same test `cut_response` applies afterwards, looking
    only at sampled tokens (columns from `start` on), never prompt or prefix."""

    def __init__(self, tok: Any, stops: Sequence[str], start: int) -> None:
        self.tok, self.stops, self.start = tok, stops, start

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        rows = input_ids[:, self.start:].tolist()  # [B, t]
        return torch.tensor([stop_hit(self.tok, r, self.stops) for r in rows],
                            dtype=torch.bool, device=input_ids.device)  # [B]


@ENGINES.register("hf")
class HFEngine:
    """transformers `generate`, batched with left padding, `max_batch` rows per call.

    Sampling uses the policy's distribution shaped only by temperature and
    top-p: the model's own generation defaults (top-k 50, repetition penalty,
    ...) are dropped so that the samples are on-policy.

    Log-probs come from one extra right-padded forward pass over prompt +
    response, not from `generate`'s per-step logits: those would hold [B, T, V]
    fp32 (6.4 GB at B=64, T=512, V=49k), and the extra pass is the learner's
    own computation, which also scores forced prefixes on the same path.

    Stop strings use our own stopping criterion rather than transformers'
    `stop_strings`, which also matches across the prompt boundary: ours sees
    only sampled text (as vLLM does) and is the very test `cut_response` uses.

    Seeding: every `generate` seeds torch's RNG from (engine seed, params.seed)
    inside `fork_rng`, so the same seeds, weights and batch give the same
    samples, and the caller's global RNG stream is left untouched. With
    `params.seed=None` the second number is a per-engine call counter.
    """

    def __init__(self, model_path: str, dtype: torch.dtype = torch.float32, device: str = "auto",
                 seed: int = 0, max_batch: int = 64, score_chunk: int = 1024) -> None:
        if device == "auto":  # the GPU Ray gave this actor, if any
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.model.eval()
        if max_batch < 1:
            raise ValueError(f"HFEngine max_batch must be >= 1, got {max_batch}")
        self.device, self.seed, self.max_batch, self.score_chunk = \
            torch.device(device), seed, max_batch, score_chunk
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None \
            else self.tok.eos_token_id
        eos = self.model.generation_config.eos_token_id  # may list several (chat models)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {t for t in [*eos, self.tok.eos_token_id] if t is not None}
        if not self.eos_ids:
            raise ValueError(f"{model_path}: neither the tokenizer nor generation_config.json "
                             "names an EOS token; set eos_token_id in generation_config.json")
        self.model.generation_config = GenerationConfig()  # see the class docstring
        self.policy_version = 0
        self._calls = 0

    def set_version(self, version: int) -> None:
        self.policy_version = version

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy every parameter in; all of them must come (tied ones once)."""
        state = self.model.state_dict()
        loaded: set[int] = set()
        for name, tensor in weights:
            if name not in state:
                raise KeyError(f"weight {name!r} does not exist in the rollout model "
                               f"(first names: {', '.join(list(state)[:3])})")
            if tensor.shape != state[name].shape:
                raise ValueError(f"weight {name!r}: shape {tuple(tensor.shape)} does not match "
                                 f"the rollout model's {tuple(state[name].shape)}")
            state[name].copy_(tensor)
            loaded.add(state[name].data_ptr())
        missing = [n for n, t in state.items() if t.data_ptr() not in loaded]
        if missing:
            raise ValueError(f"weight update left {len(missing)} tensors of the rollout model "
                             f"unset (e.g. {', '.join(missing[:3])}); send the full state dict")

    @torch.inference_mode()
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        self._check_context(batch, params)
        req = [i for i in range(len(batch.prompts)) for _ in range(batch.n)]  # B = requests * n
        context = [list(batch.prompts[i].prompt_ids) + list(batch.prefix_ids[i]) for i in req]
        self._calls += 1
        stream = self._calls if params.seed is None else params.seed
        devices = [self.device] if self.device.type == "cuda" else []
        gen: list[list[int]] = []
        finish: list[str] = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed * 1_000_003 + stream) % (1 << 63))
            for s in range(0, len(req), self.max_batch):
                g, f = self._sample(context[s:s + self.max_batch], params)
                gen += g
                finish += f
        full = [c + g for c, g in zip(context, gen)]
        starts = [len(batch.prompts[i].prompt_ids) for i in req]
        logps: list[list[float]] = []
        for s in range(0, len(req), self.max_batch):
            logps += self._score(full[s:s + self.max_batch], starts[s:s + self.max_batch],
                                 params.temperature or 1.0)
        resp = [tuple(f[st:]) for f, st in zip(full, starts)]
        return Rollouts(
            prompt_index=tuple(req), prompts=batch.prompts,
            prompt_ids=tuple(tuple(batch.prompts[i].prompt_ids) for i in req),
            response_ids=tuple(resp),
            response_text=tuple(self.tok.decode(r, skip_special_tokens=True) for r in resp),
            rollout_logprobs=tuple(tuple(lp) for lp in logps),
            prefix_len=tuple(len(batch.prefix_ids[i]) for i in req),
            finish_reason=tuple(finish), group_id=tuple(batch.group_id[i] for i in req),
            policy_version=self.policy_version,
        )

    def _check_context(self, batch: PromptBatch, params: SamplingParams) -> None:
        # RoPE models run past their context without complaint, producing garbage.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for i, p in enumerate(batch.prompts):
            if not p.prompt_ids:
                raise ValueError(f"prompt {i} (uid {p.uid!r}) has no prompt_ids; every request "
                                 "needs at least one token (e.g. BOS or the chat template)")
            need = len(p.prompt_ids) + len(batch.prefix_ids[i]) + params.max_new_tokens
            if limit is not None and need > limit:
                raise ValueError(
                    f"prompt {i} (uid {p.uid!r}): {len(p.prompt_ids)} prompt + "
                    f"{len(batch.prefix_ids[i])} prefix + max_new_tokens={params.max_new_tokens} "
                    f"tokens exceed the model's context of {limit}; lower "
                    "rollout.max_new_tokens or data.max_prompt_tokens")

    def _sample(self, rows: list[list[int]], params: SamplingParams
                ) -> tuple[list[list[int]], list[str]]:
        """Generated tokens of each row, cut after EOS / stop, and finish reasons."""
        ids, mask = _pad(rows, self.pad_id, left=True)  # [b, P]
        greedy = params.temperature == 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None if greedy else 0,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id)
        stopping = StoppingCriteriaList(
            [_StopStrings(self.tok, params.stop, ids.shape[1])] if params.stop else [])
        out = self.model.generate(input_ids=ids.to(self.device),
                                  attention_mask=mask.to(self.device),
                                  generation_config=config, stopping_criteria=stopping)
        new = out[:, ids.shape[1]:].tolist()  # [b, T]
        cuts = [cut_response(r, self.eos_ids, self.tok, params.stop) for r in new]
        return [r[:n] for r, (n, _) in zip(new, cuts)], [f for _, f in cuts]

    def _score(self, rows: list[list[int]], starts: list[int], temperature: float
               ) -> list[list[float]]:
        """log p(token t | tokens < t) under softmax(logits / temperature) for
        t >= start in each row, from one right-padded forward pass, as the
        learner computes it."""
        ids, mask = _pad(rows, self.pad_id, left=False)  # [b, L]
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model.get_decoder()(input_ids=ids,
                                          attention_mask=mask).last_hidden_state  # [b, L, H]
        cols = torch.arange(ids.shape[1], device=self.device)  # [L]
        start = torch.tensor(starts, device=self.device)[:, None]  # [b, 1]
        select = (cols >= start) & mask.bool()  # [b, L]
        sel = select[:, 1:]  # token t is predicted at position t-1
        lp, _ = logprobs_from_hidden(hidden[:, :-1][sel] / temperature,  # [N, H]; = logits / T
                                     self.model.get_output_embeddings().weight,
                                     ids[:, 1:][sel], self.score_chunk, with_entropy=False)
        return [chunk.tolist() for chunk in lp.cpu().split(sel.sum(1).tolist())]


def _engine_class(name: str) -> Any:
    if name not in ENGINES and name in ENGINE_MODULES:
        try:
            importlib.import_module(ENGINE_MODULES[name])
        except ModuleNotFoundError as exc:
            raise ValueError(f"rollout engine {name!r} is unavailable here ({exc}); use "
                             f"rollout.engine=hf or install what {name!r} needs") from exc
    return ENGINES.get(name)


class RolloutWorker:
    """Thin worker: an engine plus the verbs the training loop calls.

    `sleep()` / `wake()` (colocated runs: the engine frees its accelerator
    memory for the learner phase) reach engines that have them and are no-ops
    for others; an asleep worker refuses to generate or load weights.
    """

    def __init__(self, engine: str = "hf", model_path: str = "", seed: int = 0,
                 tools: ToolSettings | None = None, environment: EnvSettings | None = None,
                 **engine_kwargs: Any) -> None:
        if not model_path:
            raise ValueError("RolloutWorker needs model_path (a folder, or a name for "
                             "rlft.models.resolve_model)")
        # Resolved here, on this worker's node: a built-in alias is built into
        # this node's cache when the driver's node does not share its disk.
        folder = resolve_model(model_path)
        self.engine: RolloutEngine = _engine_class(engine)(folder, seed=seed, **engine_kwargs)
        self.asleep = False
        self._group: SyncGroup | None = None  # for "nccl" updates into an in-process engine
        self._turns: ToolTurns | EnvTurns | None = None
        if tools and tools.refs:
            self._turns = ToolTurns(tools, load_tokenizer(folder))
        elif environment is not None:  # episodes in an environment (rollout.env)
            limits = TurnLimits(environment.max_turns, environment.max_total_tokens)
            self._turns = EnvTurns(environment, limits, load_tokenizer(folder))

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        self._check_awake("generate")
        if self._turns is not None:  # multi-turn: rollout.tools or rollout.env
            return self._turns.generate(self.engine, batch, params)
        return self.engine.generate(batch, params)

    def load_weights(self, update: WeightUpdate) -> int:
        """Load every bucket, then adopt the update's version (returned), so a
        rollout never claims a version whose weights were only half loaded."""
        self._check_awake("load_weights")
        receive = getattr(self.engine, "receive_broadcast", None)
        if update.transport == "nccl" and receive is not None:
            receive(update)  # the engine's own worker processes hold the sync group
        else:
            tensors = iter_update(update, self._group)
            try:
                self.engine.load_weights(tensors)
            finally:  # after a failed load, receive the rest: a broadcasting sender waits
                for _ in tensors:
                    pass
        self.engine.set_version(update.version)
        return update.version

    def init_sync_group(self, host: str, port: int, rank: int, world: int,
                        backend: str = "nccl", timeout_s: float = 300.0) -> None:
        """Join learner rank 0's broadcast group for "nccl" updates at `rank`
        (an engine with several workers takes rank, rank+1, ...). Joining again
        (the group is rebuilt after a member restarted) replaces the old group.
        A broadcast that outlives `timeout_s` raises."""
        join = getattr(self.engine, "init_sync_group", None)
        if join is not None:
            join(host, port, rank, world, backend, timeout_s)
        else:
            if self._group is not None:
                self._group.close()
                self._group = None
            self._group = GROUPS.get(backend)(host, port, rank, world, timeout_s)

    def sleep(self) -> None:
        getattr(self.engine, "sleep", lambda: None)()
        self.asleep = True

    def wake(self) -> None:
        getattr(self.engine, "wake", lambda: None)()
        self.asleep = False

    def _check_awake(self, verb: str) -> None:
        if self.asleep:
            raise RuntimeError(f"RolloutWorker.{verb} called while the worker sleeps "
                               "(colocated mode); call wake() first")

    def policy_version(self) -> int:
        return self.engine.policy_version
