"""Sequence packing: the plan, the packed row, the attention, and the learner's
update packed vs padded on the real tiny model (CPU, fp32, nothing mocked)."""

from __future__ import annotations

import random

import pytest
import torch
from test_learner import (
    GRADIENT_STEP,
    _mixed_terms,
    _rl_batch,
    assert_close_weights,
    learner,
    make_batch,
    weights,
)
from tolerances import fp32_bound
from transformers import AutoModelForCausalLM

from rlft.learner.microbatch import plan_micro_batches
from rlft.learner.packing import ATTENTION, pack, pack_rows, use_packed_attention, varlen_attention
from rlft.workers.learner import LossTermSpec

# -- the plan -----------------------------------------------------------------

def test_pack_rows_hand_worked():
    # lengths [3, 7, 5, 2], budget 10, longest first: rows 1(7), 2(5), 0(3), 3(2).
    # 1 -> bin A (room 3); 2 does not fit A -> bin B (room 5); 0 fits A (room 0);
    # 3 does not fit A, fits B (room 3). Padded planning at the same budget needs
    # three micro-batches ({7}, {5}, {3, 2}: 2 x 5 = 10 but 2 x 7 = 14 > 10).
    assert pack_rows([3, 7, 5, 2], 10) == [[1, 0], [2, 3]]
    assert len(plan_micro_batches([3, 7, 5, 2], 10)) == 3
    # A row longer than the budget goes alone; an empty batch gives no micro-batch.
    assert pack_rows([12, 3, 4], 10) == [[0], [2, 1]]
    assert pack_rows([], 10) == []
    plan = plan_micro_batches([3, 7, 5, 2], 10, packed=True)
    assert [mb.rows.tolist() for mb in plan] == [[1, 0], [2, 3]]
    assert [mb.cols for mb in plan] == [7, 5]  # the loss layout keeps [b, longest row]
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        pack_rows([3], 0)


@pytest.mark.parametrize("seed", range(20))
def test_pack_rows_invariants(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
    budget = rng.randint(10, 120)
    bins = pack_rows(lengths, budget)
    assert sorted(r for b in bins for r in b) == list(range(len(lengths)))  # each row once
    room = []
    for b in bins:
        size = sum(lengths[r] for r in b)
        assert size <= budget or len(b) == 1  # only a lone row may exceed the budget
        assert [lengths[r] for r in b] == sorted((lengths[r] for r in b), reverse=True)
        room.append(budget - size)
    # First fit: a row placed in bin j did not fit the room any earlier bin had then,
    # and rooms only shrink, so it exceeds every earlier bin's final room.
    for j, b in enumerate(bins):
        for r in b:
            assert all(lengths[r] > room[i] for i in range(j)), (lengths, budget, bins)


def test_pack_hand_worked():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [4, 0, 0, 0]])
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    p = pack(ids, am)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 6] and p.cu_seqlens.dtype == torch.int32
    assert p.longest == 3
    assert p.attention_kwargs()["max_length_q"] == 3
    with pytest.raises(ValueError, match="at least one token"):
        pack(ids, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))


# -- attention ----------------------------------------------------------------

def test_packed_attention_equals_padded_and_transformers_packed_sdpa(tiny_model_path):
    """Three ways to run the same rows: padded (SDPA + padding mask), transformers'
    own packed detection (position_ids restart -> dense block-diagonal mask), and
    ours (one SDPA per sequence). Hidden states agree to rounding: in float64, as the
    three sum in different orders and float32 would leave the verdict to the CPU's
    kernels (issue #25); float64 rounding is ~1e-15, so 1e-10 still tests the maths."""
    batch = make_batch()
    ids, am = batch.input_ids, batch.attention_mask
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64).eval()
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64).eval()
    use_packed_attention(ours)
    assert ours.config._attn_implementation == ATTENTION
    p = pack(ids, am)
    kw = {"use_cache": False}  # transformers looks for packed rows only without a cache
    with torch.no_grad():
        padded = ref.model(input_ids=ids, attention_mask=am.long(), **kw
                           ).last_hidden_state[am]  # [T, H]
        hf_packed = ref.model(input_ids=p.input_ids, position_ids=p.position_ids, **kw
                              ).last_hidden_state[0]  # [T, H]
        packed = ours.model(input_ids=p.input_ids, position_ids=p.position_ids, **kw,
                            **p.attention_kwargs()).last_hidden_state[0]  # [T, H]
        # Without packing kwargs our attention is SDPA with the padding mask.
        ours_padded = ours.model(input_ids=ids, attention_mask=am.long(), **kw
                                 ).last_hidden_state[am]
    assert padded.dtype == packed.dtype == torch.float64
    torch.testing.assert_close(hf_packed, padded, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(packed, padded, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours_padded, padded, atol=0, rtol=0)


def test_packed_attention_refuses_what_it_cannot_do():
    q = torch.zeros(1, 4, 6, 8)
    kv = torch.zeros(1, 2, 6, 8)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="train.packing=false"):
        varlen_attention(torch.nn.Module(), q, kv, kv, None, sliding_window=4,
                         cu_seq_lens_q=cu, max_length_q=4)
    with pytest.raises(TypeError, match="train.packing=false"):
        use_packed_attention(torch.nn.Linear(2, 2))


# -- the learner --------------------------------------------------------------

def test_packed_update_equals_padded(tiny_model_path):
    """Loss, metrics, gradients (GRADIENT_STEP: the step is ~g) and log-probs are
    the padded ones, with several micro-batches on either side and three
    aggregations normalised by the step's global counts."""
    batch = make_batch(expert=[False, True, False, False, True, False])
    lengths = batch.attention_mask.sum(-1).tolist()  # [14, 9, 20, 6, 17, 11]
    # Budget 30: packed {20, 9}, {17, 11}, {14, 6}; padded {20}, {17}, {14, 11}, {9, 6}.
    assert len(plan_micro_batches(lengths, 30, packed=True)) == 3
    assert len(plan_micro_batches(lengths, 30)) == 4
    runs = {}
    rl = None
    for name, budget, packing in (("whole", 10**6, False), ("padded", 30, False),
                                  ("packed", 30, True), ("packed_whole", 10**6, True)):
        with learner(tiny_model_path, micro_batch_tokens=budget, packing=packing,
                     **GRADIENT_STEP) as lrn:
            lp, ent = lrn.compute_logprobs(batch, mask=batch.attention_mask)
            rl = rl if rl is not None else _rl_batch(lrn, batch)  # the same inputs for all
            stats = lrn.update(rl, _mixed_terms(norm=16.0))
            runs[name] = (lp, ent, stats, weights(lrn))
    lp0, ent0, s0, w0 = runs["whole"]
    assert s0.metrics["ppo_clip/clip_frac"] > 0 and s0.metrics["kl"] > 0
    # Packed, padded and whole sum in different orders: float32 rounding of each
    # figure's scale (fp32_bound); the grad norm, a sum of squares, to 1e-5 relative.
    adv = batch.advantages
    for name in ("padded", "packed", "packed_whole"):
        lp, ent, s, w = runs[name]
        torch.testing.assert_close(lp, lp0, atol=fp32_bound(lp0), rtol=0, msg=name)
        torch.testing.assert_close(ent, ent0, atol=fp32_bound(ent0), rtol=0, msg=name)
        assert s.loss == pytest.approx(s0.loss, abs=fp32_bound(s0.loss, adv)), name
        assert s.grad_norm == pytest.approx(s0.grad_norm, rel=1e-5), name
        assert s.entropy == pytest.approx(s0.entropy, abs=fp32_bound(s0.entropy)), name
        assert s.tokens == s0.tokens
        for key, value in s0.metrics.items():
            assert s.metrics[key] == pytest.approx(value, abs=fp32_bound(value, adv)), (name, key)
        assert_close_weights(w0, w, atol=fp32_bound(*w0.values()))
    assert not runs["packed"][0][:, 0].any()  # position 0 is never scored, packed or not


def test_compiled_layers_give_the_same_update(tiny_model_path):
    """train.compile: the compiled decoder layers (packed) take the eager step."""
    batch = make_batch()
    out = []
    for compile_ in (False, True):
        with learner(tiny_model_path, micro_batch_tokens=30, packing=True, compile=compile_,
                     **GRADIENT_STEP) as lrn:
            stats = [lrn.update(batch, [LossTermSpec("sft_ce", 1.0)]) for _ in range(2)]
            out.append(([s.loss for s in stats], weights(lrn)))
    # Inductor's kernels sum in their own order: float32 rounding (fp32_bound).
    assert out[1][0] == pytest.approx(out[0][0], abs=fp32_bound(out[0][0]))
    assert_close_weights(out[0][1], out[1][1], atol=fp32_bound(*out[0][1].values()))
