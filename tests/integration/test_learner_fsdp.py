"""Data-parallel FSDP2 on CPU: two gloo ranks, each with half the rows, make the
same update as one rank with the whole batch, and their checkpoint loads into a
world of one (DCP reshards it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tolerances import fp32_bound

from rlft.learner.microbatch import plan_micro_batches
from rlft.types import TrainBatch
from rlft.workers.learner import Learner, LearnerParams, LossTermSpec

VOCAB = 49152
LENGTHS = (14, 9, 20, 6, 17, 11)
# Rank 0 gets rows 0, 2, 4 (lengths 14, 20, 17): three micro-batches at budget 25;
# rank 1 gets rows 1, 3, 5 (9, 6, 11): two, so it runs one stand-in micro-batch
# to keep FSDP's collectives paired.
BUDGET = 25
# Adam's first step is ~sign(g) with a tiny eps; eps = 1, lr = 1 makes it ~g,
# so the parameters compare the gradients (see the unit tests).
PARAMS = dict(lr=1.0, eps=1.0, max_grad_norm=0.0, micro_batch_tokens=BUDGET, seed=0)
TERMS = [
    LossTermSpec("ppo_clip", 1.0, "policy", "token_mean", {"clip_low": 0.1}),
    LossTermSpec("sft_ce", 0.5, "expert", "seq_mean_token_sum"),
    LossTermSpec("kl", 0.1, "policy", "seq_mean_token_mean"),
]
TIMEOUT_S = 240


def make_batch(seed: int) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    B, L = len(LENGTHS), max(LENGTHS)
    pos = torch.arange(L)[None, :]  # [1, L]
    am = pos < torch.tensor(LENGTHS)[:, None]  # [B, L]
    resp = am & (pos >= 3)
    ids = torch.where(am, torch.randint(0, VOCAB, (B, L), generator=g), 2)
    adv = (torch.randn(B, 1, generator=g) * resp).contiguous()  # [B, L]
    noise = 0.3 * torch.randn(B, L, generator=g)
    return TrainBatch(input_ids=ids, attention_mask=am, response_mask=resp, advantages=adv,
                      group_id=torch.arange(B) // 2, policy_version=0,
                      expert_mask=torch.tensor([False, False, True, False, False, True]),
                      # Offsets from the current log-probs, added once those are known.
                      old_logprobs=noise, ref_logprobs=-noise)


def shard(batch: TrainBatch, rank: int, world: int) -> TrainBatch:
    """The training loop's split: rows rank, rank + world, ..."""
    return batch if world == 1 else batch.select(slice(rank, None, world))


def rl_step(lrn: Learner, batch: TrainBatch):
    lp, _ = lrn.compute_logprobs(batch)
    rl = batch.with_(old_logprobs=lp + batch.old_logprobs, ref_logprobs=lp + batch.ref_logprobs)
    return lp, lrn.update(rl, TERMS)


def _worker(rank: int, world: int, init: str, model_path: str, out: str) -> None:
    torch.set_num_threads(1)  # two ranks share two cores
    lrn = Learner(model_path, LearnerParams(**PARAMS), rank, world, init_method=init)
    lp, stats = rl_step(lrn, shard(make_batch(0), rank, world))
    first = lrn.full_state()
    lrn.save(os.path.join(out, "ckpt"))
    _, stats2 = rl_step(lrn, shard(make_batch(1), rank, world))
    second = lrn.full_state()
    torch.save({"lp": lp, "loss": stats.loss, "loss2": stats2.loss},
               os.path.join(out, f"rank{rank}.pt"))
    if rank == 0:
        torch.save({"first": first, "second": second}, os.path.join(out, "weights.pt"))
    lrn.shutdown()


def _spawn_world_of_two(tmp_path: Path, model_path: str) -> None:
    init = f"file://{tmp_path / 'pg-init'}"
    ctx = mp.start_processes(_worker, args=(2, init, model_path, str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=5):  # raises with the child's traceback if a rank fails
            if time.monotonic() > deadline:
                pytest.fail(f"world of two did not finish in {TIMEOUT_S} s (a collective hung?)")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()


def test_two_ranks_update_like_one_and_their_checkpoint_reshards(tmp_path, tiny_model_path):
    lengths = list(LENGTHS)
    assert len(plan_micro_batches(lengths[0::2], BUDGET)) == 3
    assert len(plan_micro_batches(lengths[1::2], BUDGET)) == 2

    _spawn_world_of_two(tmp_path, tiny_model_path)
    two = torch.load(tmp_path / "weights.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    one = Learner(tiny_model_path, LearnerParams(**PARAMS))
    try:
        lp, stats = rl_step(one, make_batch(0))
        for r in range(2):  # each rank scored its own rows of the batch
            # The same micro-batches on either side (BUDGET): the same sums, so tight.
            torch.testing.assert_close(ranks[r]["lp"], lp[r::2], atol=1e-6, rtol=0)
            # The loss adds the micro-batches' float32 sums in another order.
            assert ranks[r]["loss"] == pytest.approx(stats.loss, abs=fp32_bound(stats.loss))
        full = one.full_state()  # FSDP's reduce-scatter sums the ranks' gradients in its order
        _compare(two["first"], full, atol=fp32_bound(*full.values()))
    finally:
        one.shutdown()

    # The two ranks' checkpoint (after step 1) resumed by one rank: same weights
    # exactly, and its step 2 on the whole batch matches the two ranks' step 2.
    resumed = Learner(tiny_model_path, LearnerParams(**PARAMS))
    try:
        resumed.load(str(tmp_path / "ckpt"))
        assert resumed.steps == 1
        _compare(two["first"], resumed.full_state(), atol=0)
        _, stats2 = rl_step(resumed, make_batch(1))
        assert ranks[0]["loss2"] == pytest.approx(stats2.loss, abs=fp32_bound(stats2.loss))
        full = resumed.full_state()
        _compare(two["second"], full, atol=fp32_bound(*full.values()))
    finally:
        resumed.shutdown()


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)
