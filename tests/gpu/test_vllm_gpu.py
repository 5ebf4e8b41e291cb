"""vLLM's GPU-only paths: sleep mode (colocated runs) and the "nccl" weight
transport (learner rank 0 broadcasting into the engine's workers over PyNccl).

Their CPU seams run in CI: tests/unit/workers/test_weight_sync.py and
test_vllm_engine.py drive the same BroadcastSender / receive code over a gloo
group, and tests/integration/test_vllm_loop.py the colocated hooks. Here the
group is NCCL, which needs one GPU per rank (NCCL refuses two ranks on one
device): the broadcast tests want 2 GPUs. Skipped where CUDA is not available
(tests/conftest.py). The tiny model comes from the rlft cache (tiny_model_path).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from rlft.types import Prompt, PromptBatch
from rlft.workers.weight_sync import GROUPS, BroadcastSender, iter_update

pytestmark = pytest.mark.gpu
pytest.importorskip("vllm", reason="the GPU tests of the vLLM engine need vLLM")

# vLLM fp32 on a GPU against transformers fp32 on the CPU.
ATOL = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def perturbed(model_path: str, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights plus noise: what a trained learner would send."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in
            model.state_dict().items()}


def max_error(model_path: str, weights: dict[str, torch.Tensor], out) -> float:
    """Largest |rollout log-prob - transformers log-prob| over `out` (CPU reference)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    model.load_state_dict(weights)
    err = 0.0
    for b in range(len(out)):
        ids = torch.tensor([list(out.prompt_ids[b]) + list(out.response_ids[b])])  # [1, P+T]
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)  # [P+T, V]
        p = len(out.prompt_ids[b])
        ref = [logp[p + t - 1, x].item() for t, x in enumerate(out.response_ids[b])]
        err = max([err, *(abs(x - y) for x, y in zip(out.rollout_logprobs[b], ref))])
    return err


def prompts() -> PromptBatch:
    rows = [Prompt(uid=str(i), text="", prompt_ids=tuple(range(100 + 7 * i, 120 + 7 * i)))
            for i in range(3)]
    return PromptBatch.plain(rows, n=2)


def engine(model_path: str, **kw):
    from rlft.workers.vllm_engine import VLLMEngine

    return VLLMEngine(model_path, dtype="float32", max_model_len=512,
                      gpu_memory_utilization=0.3, **kw)


def test_sleep_frees_memory_and_a_woken_engine_takes_new_weights(tiny_model_path):
    from rlft.workers.rollout import SamplingParams

    eng = engine(tiny_model_path, sleep_mode=True)
    try:
        assert eng.sleeps  # CUDA has vLLM's sleep mode
        free_awake, _ = torch.cuda.mem_get_info()
        eng.sleep()  # level 1: weights to CPU, KV cache dropped
        free_asleep, _ = torch.cuda.mem_get_info()
        assert free_asleep > free_awake + (100 << 20)  # at least the KV cache came back
        eng.wake()
        weights = perturbed(tiny_model_path, seed=1)
        eng.load_weights(weights.items())
        out = eng.generate(prompts(), SamplingParams(max_new_tokens=8, seed=0))
        assert max_error(tiny_model_path, weights, out) < ATOL
    finally:
        eng.close()


def _nccl_pair(rank: int, port: int, model_path: str, queue, with_vllm: bool) -> None:
    """Rank 0 plays learner rank 0 on GPU 0; rank 1 an engine (or a bare
    receiver) on GPU 1."""
    weights = perturbed(model_path, seed=2)
    if rank == 0:
        torch.cuda.set_device(0)
        sender = BroadcastSender(GROUPS.get("nccl")("127.0.0.1", port, 0, 2))
        queue.put(sender.stage(weights.items(), version=3, bucket_bytes=4 << 20))
        assert sender.send() == len(weights)
        torch.cuda.synchronize()
        return
    if not with_vllm:
        torch.cuda.set_device(1)
        group = GROUPS.get("nccl")("127.0.0.1", port, 1, 2)
        got = {n: t.cpu() for n, t in iter_update(queue.get(), group)}
        assert got.keys() == weights.keys()
        assert all(torch.equal(got[n], weights[n]) for n in weights)
        return
    from rlft.workers.rollout import SamplingParams

    os.environ["CUDA_VISIBLE_DEVICES"] = "1"  # inherited by vLLM's engine and worker processes
    eng = engine(model_path)
    try:
        assert eng.init_sync_group("127.0.0.1", port, 1, 2, "nccl") == [1]
        update = queue.get()
        eng.receive_broadcast(update)
        eng.set_version(update.version)
        out = eng.generate(prompts(), SamplingParams(max_new_tokens=8, seed=0))
        assert out.policy_version == 3
        assert max_error(model_path, weights, out) < ATOL
    finally:
        eng.close()


@pytest.mark.parametrize("with_vllm", [False, True], ids=["bare-receiver", "vllm-engine"])
def test_nccl_broadcast_from_learner_rank_0(tiny_model_path, with_vllm):
    if torch.cuda.device_count() < 2:  # here, not at import: spawned ranks import this module
        pytest.skip("an NCCL group needs one GPU per rank: 2 GPUs")
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_nccl_pair, args=(free_port(), tiny_model_path, queue, with_vllm), nprocs=2)
