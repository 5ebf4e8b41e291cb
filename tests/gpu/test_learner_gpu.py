"""The learner on one CUDA GPU, in-process (no Ray): bf16 against an fp32 CPU
reference, packing against padding, compiled against eager.

Models are random-init small Qwen2s built from a config (no downloads, no
tokenizer), so these run on a bare GPU box with torch + transformers only.
Skipped where CUDA is not available (tests/conftest.py).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.algos.aggregation import aggregate
from rlft.algos.base import LOSSES, GlobalCounts, LossInputs
from rlft.algos.logprobs import logprobs_from_logits
from rlft.types import TrainBatch
from rlft.workers.learner import Learner, LearnerParams, LossTermSpec

pytestmark = pytest.mark.gpu

VOCAB = 2048
SEED = 0
# lr 1, eps 1: Adam's first step is ~g itself, so the weight change compares gradients
# (see tests/unit/workers/test_learner.py GRADIENT_STEP).
GRADIENT_STEP = {"lr": 1.0, "eps": 1.0, "max_grad_norm": 0.0}
TERM = LossTermSpec("ppo_clip", 1.0, "policy", "token_mean", {"clip_low": 0.2})


def small_qwen2() -> Qwen2ForCausalLM:
    """Qwen2-0.5B's layout scaled down: GQA 4/2 heads of 64, tied embeddings."""
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=704,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, tie_word_embeddings=True, max_position_embeddings=1024)
    return Qwen2ForCausalLM(cfg).float()


def make_batch(seed: int = 0, rows: int = 12, width: int = 160) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(width // 4, width + 1, (rows,), generator=g)
    prompt = torch.randint(4, 24, (rows,), generator=g)
    pos = torch.arange(width)[None, :]
    am = pos < lengths[:, None]  # [B, L]
    resp = am & (pos >= prompt[:, None])
    ids = torch.where(am, torch.randint(0, VOCAB, (rows, width), generator=g), 0)
    adv = torch.randn(rows, 1, generator=g).expand(rows, width) * resp
    return TrainBatch(input_ids=ids, attention_mask=am, response_mask=resp,
                      advantages=adv.contiguous(), group_id=torch.arange(rows) // 4,
                      policy_version=0)


@contextlib.contextmanager
def gpu_learner(**kw):
    lrn = Learner(small_qwen2, LearnerParams(seed=SEED, **{**GRADIENT_STEP, **kw}))
    assert lrn.device.type == "cuda"
    try:
        yield lrn
    finally:
        lrn.shutdown()


def weights(lrn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.float().cpu().clone() for k, v in lrn.named_weights()}


def cpu_reference(batch: TrainBatch) -> tuple[float, torch.Tensor, dict, dict]:
    """Plain fp32 CPU step: full logits, the same loss term, torch AdamW.

    Returns loss, [B, L] log-probs before the step, and weights before/after.
    """
    torch.manual_seed(SEED)  # the learner seeds the same way before building
    model = small_qwen2()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                   use_cache=False).logits  # [B, L, V]
    B, L = batch.input_ids.shape
    lp, ent = logprobs_from_logits(logits[:, :-1].reshape(-1, VOCAB),
                                   batch.input_ids[:, 1:].reshape(-1))  # [B*(L-1)]
    zero = torch.zeros(B, 1)
    lp = torch.cat([zero, lp.view(B, L - 1)], 1)  # [B, L]
    ent = torch.cat([zero, ent.view(B, L - 1)], 1)
    mask = batch.response_mask.bool()
    out = LOSSES.get(TERM.loss)(LossInputs(logprobs=lp, response_mask=mask,
                                           advantages=batch.advantages, entropy=ent),
                                **TERM.params)
    counts = GlobalCounts(tokens=int(mask.sum()), seqs=int(mask.any(-1).sum()))
    loss = aggregate(torch.where(mask, out.loss, 0.0), mask, TERM.agg, counts)
    loss.backward()
    opt = torch.optim.AdamW(model.parameters(), lr=GRADIENT_STEP["lr"],
                            eps=GRADIENT_STEP["eps"], weight_decay=0.0)
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return float(loss.detach()), torch.where(mask, lp.detach(), 0.0), before, after


def delta_error(before: dict, after: dict, got: dict) -> tuple[float, float]:
    """(relative L2 error, cosine) of the learner's weight change vs the reference's."""
    ref = torch.cat([(after[k] - before[k]).flatten() for k in got])
    ours = torch.cat([(got[k] - before[k]).flatten() for k in got])
    rel = float((ours - ref).norm() / ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(ours, ref, dim=0))
    return rel, cos


def test_bf16_step_matches_fp32_cpu_reference():
    batch = make_batch()
    ref_loss, ref_lp, before, after = cpu_reference(batch)
    with gpu_learner(param_dtype="bfloat16", packing=True, micro_batch_tokens=700,
                     grad_checkpointing=True) as lrn:
        w0 = weights(lrn)
        lp, _ = lrn.compute_logprobs(batch)
        stats = lrn.update(batch, [TERM])
        got = weights(lrn)
    for k in before:  # the same initial weights, fp32 master copy on the GPU
        torch.testing.assert_close(w0[k], before[k], atol=0, rtol=0, msg=k)
    resp = batch.response_mask.bool()
    err = (lp - ref_lp)[resp].abs()
    # bf16 logits of ~ln(2048) = 7.6: a few 1e-2 per token at worst, unbiased on average.
    assert float(err.mean()) < 2e-2 and float(err.max()) < 0.15, (err.mean(), err.max())
    assert stats.loss == pytest.approx(ref_loss, abs=2e-2)
    rel, cos = delta_error(before, after, got)
    assert rel < 0.1 and cos > 0.99, (rel, cos)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 2e-2), ("float32", 1e-4)])
def test_packing_gives_the_padded_loss_on_gpu(dtype, tol):
    """bf16 takes torch's varlen FlashAttention; fp32 one SDPA per sequence."""
    batch = make_batch(seed=1, rows=16)
    runs = []
    for packing in (False, True):
        with gpu_learner(param_dtype=dtype, packing=packing, micro_batch_tokens=900) as lrn:
            start = weights(lrn)
            lp, _ = lrn.compute_logprobs(batch)
            stats = lrn.update(batch, [TERM])
            runs.append((lp, stats, weights(lrn)))
    (lp0, s0, w0), (lp1, s1, w1) = runs
    resp = batch.response_mask.bool()
    assert float((lp1 - lp0)[resp].abs().mean()) < tol
    assert s1.loss == pytest.approx(s0.loss, abs=tol)
    assert s1.grad_norm == pytest.approx(s0.grad_norm, rel=5 * tol)
    rel, cos = delta_error(start, w0, w1)  # the two updates (~ gradients) agree
    assert rel < 5 * tol and cos > 1 - tol, (rel, cos)


def test_compiled_layers_match_eager_on_gpu():
    batch = make_batch(seed=2)
    out = []
    for compile_ in (False, True):
        with gpu_learner(param_dtype="bfloat16", packing=True, compile=compile_,
                         micro_batch_tokens=700) as lrn:
            out.append([lrn.update(batch, [TERM]).loss for _ in range(3)])
    assert out[1] == pytest.approx(out[0], abs=2e-2)


def test_weights_stay_on_the_gpu_when_asked():
    with gpu_learner(param_dtype="bfloat16") as lrn:
        on_gpu = dict(lrn.named_weights(cpu=False))
        on_cpu = dict(lrn.named_weights())
    assert all(t.is_cuda for t in on_gpu.values())
    assert all(not t.is_cuda for t in on_cpu.values())
    for k, t in on_cpu.items():
        torch.testing.assert_close(on_gpu[k].cpu(), t, atol=0, rtol=0)


def test_gpu_defaults_engine_on_the_gpu_and_cached_blocks_released(tiny_model_path):
    """An actor holding a GPU: the transformers engine runs there unasked, and a
    colocated learner hands its cached blocks back before the engines wake."""
    from rlft.learner.distributed import release_cached_memory
    from rlft.workers.rollout import HFEngine

    eng = HFEngine(tiny_model_path)
    assert eng.device.type == "cuda" and next(eng.model.parameters()).is_cuda
    del eng
    block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    del block
    assert torch.cuda.memory_reserved() >= 256 << 20  # freed, but still cached
    release_cached_memory(torch.device("cuda"))
    assert torch.cuda.memory_reserved() < 256 << 20
