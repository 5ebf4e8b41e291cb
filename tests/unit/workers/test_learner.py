"""The FSDP2 learner in a world of one (gloo, CPU) on the tiny random Llama.

Every test builds real learners on the real tiny model; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.distributed as dist
from tolerances import fp32_bound
from transformers import AutoModelForCausalLM

from rlft.learner.microbatch import plan_micro_batches
from rlft.types import TrainBatch
from rlft.workers.learner import Learner, LearnerParams, LossTermSpec, NonFiniteError

VOCAB = 49152  # the tiny-random model's vocabulary (SmolLM2's tokenizer)


def make_batch(seed: int = 0, lengths=(14, 9, 20, 6, 17, 11), prompt=(4, 3, 5, 2, 6, 3),
               expert=None, L: int = 22) -> TrainBatch:
    """Right-padded rows; tokens after the prompt are the response."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(0, VOCAB, (B, L), generator=g)
    pos = torch.arange(L)[None, :]  # [1, L]
    am = pos < torch.tensor(lengths)[:, None]  # [B, L]
    resp = am & (pos >= torch.tensor(prompt)[:, None])
    ids = torch.where(am, ids, 2)  # pad with eos, as the collator does
    adv = torch.randn(B, 1, generator=g).expand(B, L) * resp  # one score per sequence
    return TrainBatch(
        input_ids=ids, attention_mask=am, response_mask=resp, advantages=adv.contiguous(),
        group_id=torch.arange(B) // 2, policy_version=0,
        expert_mask=None if expert is None else torch.tensor(expert))


@contextlib.contextmanager
def learner(model, **kw):
    ref = kw.pop("ref_model", None)
    lrn = Learner(model, LearnerParams(**{"lr": 1e-2, "max_grad_norm": 0.0, **kw}),
                  ref_model=ref)
    try:
        yield lrn
    finally:
        lrn.shutdown()


def weights(lrn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lrn.named_weights()}


def assert_close_weights(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def naive_logprobs(model_path, batch):
    """Full-logits HF forward + log_softmax gather: [B, L] log-probs and entropy,
    in float64 (the same weights): the exact values the learner's float32 is held to."""
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    logp = torch.log_softmax(logits[:, :-1], -1)  # [B, L-1, V]
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
    ent = -(logp.exp() * logp).sum(-1)  # [B, L-1]
    zero = torch.zeros(batch.input_ids.shape[0], 1, dtype=torch.float64)
    return torch.cat([zero, picked], 1), torch.cat([zero, ent], 1)  # [B, L]


def test_learner_owns_only_the_process_group_it_created(tiny_model_path, tmp_path):
    with learner(tiny_model_path):
        assert dist.is_initialized()
    assert not dist.is_initialized()
    with pytest.raises(TypeError, match="has no .model"):
        Learner(lambda: torch.nn.Linear(2, 2), LearnerParams())
    assert not dist.is_initialized()  # a failed construction leaves no group behind
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        with pytest.raises(RuntimeError, match="rank 0 of 2"):
            Learner(tiny_model_path, LearnerParams(), rank=0, world_size=2)
        with learner(tiny_model_path):
            pass
        assert dist.is_initialized()  # the caller's group outlives the learner
    finally:
        dist.destroy_process_group()


def test_params_and_batch_errors_name_the_field(tiny_model_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        LearnerParams(lr_schedule="step")
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        LearnerParams(micro_batch_tokens=0)
    with learner(tiny_model_path) as lrn:
        batch = make_batch()
        with pytest.raises(ValueError, match=r"response_mask\[:, 0\]"):
            lrn.update(batch.with_(response_mask=batch.attention_mask),
                       [LossTermSpec("sft_ce", 1.0)])
        with pytest.raises(ValueError, match="right-padded"):
            lrn.compute_logprobs(batch.with_(attention_mask=batch.attention_mask.flip(-1)))
        with pytest.raises(ValueError, match="advantages has shape"):
            lrn.update(batch.with_(advantages=batch.advantages[:, :5]),
                       [LossTermSpec("sft_ce", 1.0)])
        with pytest.raises(ValueError, match="at least one LossTermSpec"):
            lrn.update(batch, [])
        with pytest.raises(RuntimeError, match="ref_model="):
            lrn.compute_logprobs(batch, ref=True)


# -- the learner ----------------------------------------------------------------

def test_compute_logprobs_equals_full_logits_forward(tiny_model_path):
    batch = make_batch()
    want_lp, want_ent = naive_logprobs(tiny_model_path, batch)
    # A small budget splits the batch into several reordered micro-batches.
    with learner(tiny_model_path, micro_batch_tokens=40, logprob_chunk=16,
                 ref_model=tiny_model_path) as lrn:
        lp, ent = lrn.compute_logprobs(batch, mask=batch.attention_mask)
        real = batch.attention_mask.clone()
        real[:, 0] = False  # position 0 has no context and is 0 by definition
        # float32 learner against the float64 reference, within float32 rounding.
        torch.testing.assert_close(lp[real].double(), want_lp[real], rtol=0,
                                   atol=fp32_bound(want_lp[real]))
        torch.testing.assert_close(ent[real].double(), want_ent[real], rtol=0,
                                   atol=fp32_bound(want_ent[real]))
        assert not lp[~real].any() and not ent[~real].any()

        # Default: response tokens only, zeros elsewhere.
        lp_r, _ = lrn.compute_logprobs(batch)
        resp = batch.response_mask
        torch.testing.assert_close(lp_r[resp].double(), want_lp[resp], rtol=0,
                                   atol=fp32_bound(want_lp[resp]))
        assert not lp_r[~resp].any()

        # The reference starts equal to the policy and stays frozen while it trains.
        ref_before, _ = lrn.compute_logprobs(batch, ref=True)
        torch.testing.assert_close(ref_before, lp_r, atol=1e-6, rtol=0)
        lrn.update(batch, [LossTermSpec("sft_ce", 1.0, "all")])
        ref_after, _ = lrn.compute_logprobs(batch, ref=True)
        lp_after, _ = lrn.compute_logprobs(batch)
        assert torch.equal(ref_after, ref_before)
        assert (lp_after[resp] - lp_r[resp]).abs().max() > 1e-3


def test_sft_update_reports_the_global_loss_and_lowers_it(tiny_model_path):
    batch = make_batch()
    want_lp, want_ent = naive_logprobs(tiny_model_path, batch)
    resp = batch.response_mask
    with learner(tiny_model_path, micro_batch_tokens=50) as lrn:
        history = [lrn.update(batch, [LossTermSpec("sft_ce", 1.0, "all")]) for _ in range(4)]
    first = history[0]
    # token_mean of -log p over every response token of the batch, in one number
    # (float32 sums against the float64 reference: fp32_bound).
    assert first.loss == pytest.approx(float(-want_lp[resp].mean()),
                                       abs=fp32_bound(want_lp[resp]))
    assert first.metrics["sft_ce/loss"] == pytest.approx(first.loss)
    assert first.entropy == pytest.approx(float(want_ent[resp].mean()),
                                          abs=fp32_bound(want_ent[resp]))
    assert first.tokens == int(resp.sum()) and not first.skipped
    assert first.lr == 1e-2 and first.grad_norm > 0
    losses_ = [s.loss for s in history]
    assert all(b < a for a, b in zip(losses_, losses_[1:])), losses_
    assert losses_[-1] < losses_[0] - 0.5


# Adam's first step is lr * g / (|g| + eps): with the usual tiny eps that is
# lr * sign(g), so fp rounding in a near-zero gradient entry moves it by a whole
# lr. With eps = 1 and lr = 1 the step is ~g itself, so comparing parameters
# compares the gradients (steps up to ~0.4 here, so an error in the
# normalisation shows far above fp32_bound of the weights, ~1.5e-5).
GRADIENT_STEP = {"lr": 1.0, "eps": 1.0}


def _mixed_terms(norm: float) -> list[LossTermSpec]:
    """Three terms, three aggregations, policy and expert rows."""
    return [
        LossTermSpec("ppo_clip", 1.0, "policy", "token_mean", {"clip_low": 0.1}),
        LossTermSpec("chord_expert", 0.5, "expert", "seq_mean_token_mean"),
        LossTermSpec("kl", 0.1, "policy", "seq_mean_token_sum_norm", norm_const=norm),
    ]


def _rl_batch(lrn: Learner, batch: TrainBatch) -> TrainBatch:
    """Old and reference log-probs near the current ones, so ratios clip and KL is non-zero."""
    lp, _ = lrn.compute_logprobs(batch)
    g = torch.Generator().manual_seed(7)
    noise = 0.3 * torch.randn(lp.shape, generator=g)
    return batch.with_(old_logprobs=lp + noise, ref_logprobs=lp - noise)


def test_micro_batching_does_not_change_the_update(tiny_model_path):
    batch = make_batch(expert=[False, True, False, False, True, False])
    lengths = batch.attention_mask.sum(-1).tolist()
    # Budget 25 gives micro-batches {20}, {17}, {14}, {11, 9}, {6}; a huge one gives one.
    assert len(plan_micro_batches(lengths, 25)) == 5
    assert len(plan_micro_batches(lengths, 10**6)) == 1
    results = []
    for budget in (10**6, 25):
        with learner(tiny_model_path, micro_batch_tokens=budget, **GRADIENT_STEP) as lrn:
            rl = _rl_batch(lrn, batch)
            stats = lrn.update(rl, _mixed_terms(norm=16.0))
            results.append((stats, weights(lrn)))
    (whole, w_whole), (split, w_split) = results
    assert whole.metrics["ppo_clip/clip_frac"] > 0 and whole.metrics["kl"] > 0
    # Different micro-batch shapes sum in different orders: float32 rounding (fp32_bound)
    # of the per-token values (advantage-sized) and of the weights.
    assert split.loss == pytest.approx(whole.loss, abs=fp32_bound(whole.loss, batch.advantages))
    for key, value in whole.metrics.items():
        assert split.metrics[key] == pytest.approx(
            value, abs=fp32_bound(value, batch.advantages)), key
    assert_close_weights(w_whole, w_split, atol=fp32_bound(*w_whole.values()))


def test_rows_select_the_terms_tokens(tiny_model_path):
    """A term on some rows ignores the others entirely, NaN advantages included."""
    expert = [False, True, False, False, True, False]
    batch = make_batch(expert=expert)
    e = torch.tensor(expert)
    nan_adv = torch.where(e[:, None] & batch.response_mask, math.nan, batch.advantages)
    mixed = batch.with_(advantages=nan_adv)
    terms = [LossTermSpec("ppo_clip", 1.0, "policy"),
             LossTermSpec("sft_ce", 0.5, "expert", "seq_mean_token_sum")]
    only_policy = batch.select(~e).with_(expert_mask=None)
    only_expert = batch.select(e).with_(expert_mask=None)
    runs = {}
    for name, b, ts in [
        ("mixed", mixed, terms),
        # The same two terms, each on a batch that holds only its own rows.
        ("policy", only_policy, [terms[0]]),
        ("expert", only_expert, [LossTermSpec("sft_ce", 0.5, "all", "seq_mean_token_sum")]),
    ]:
        with learner(tiny_model_path, lr=0.0) as lrn:  # lr 0: compare losses and grads
            stats = lrn.update(b, ts)
            runs[name] = stats
    assert not runs["mixed"].skipped and math.isfinite(runs["mixed"].loss)
    # Other batches, other micro-batches: float32 rounding of each loss's scale (fp32_bound).
    assert runs["mixed"].metrics["ppo_clip/loss"] == pytest.approx(
        runs["policy"].metrics["ppo_clip/loss"], abs=fp32_bound(batch.advantages))
    sft = runs["expert"].metrics["sft_ce/loss"]
    assert runs["mixed"].metrics["sft_ce/loss"] == pytest.approx(sft, abs=fp32_bound(sft))
    # With the expert rows' mask all-zero for the policy term, advantages there are irrelevant.
    assert runs["mixed"].loss == pytest.approx(
        runs["policy"].loss + 0.5 * runs["expert"].metrics["sft_ce/loss"],
        abs=fp32_bound(runs["mixed"].loss))
    # NaN advantages in rows the policy term does not cover change nothing, bit for bit.
    with learner(tiny_model_path, lr=1e-2) as lrn:
        lrn.update(mixed, terms)
        w_mixed = weights(lrn)
    with learner(tiny_model_path, lr=1e-2) as lrn:
        lrn.update(batch.with_(advantages=torch.where(torch.isnan(nan_adv), 0.0, nan_adv)), terms)
        w_clean = weights(lrn)
    assert_close_weights(w_mixed, w_clean, atol=0)


def _optim_snapshot(lrn: Learner) -> dict:
    return {(i, k): (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
            for i, st in enumerate(lrn.opt.state.values()) for k, v in st.items()}


def test_nonfinite_updates_are_skipped_then_abort(tiny_model_path):
    batch = make_batch()
    bad = batch.with_(advantages=torch.where(batch.response_mask, math.nan, 0.0))
    terms = [LossTermSpec("ppo_clip", 1.0, "all")]
    with learner(tiny_model_path, max_nonfinite_steps=2, warmup_steps=4) as lrn:
        assert not lrn.update(batch, terms).skipped  # optimizer state exists from here
        w0, opt0, lr0 = weights(lrn), _optim_snapshot(lrn), lrn.sched.get_last_lr()
        stats = lrn.update(bad, terms)
        assert stats.skipped and not math.isfinite(stats.loss)
        assert_close_weights(weights(lrn), w0, atol=0)
        assert _optim_snapshot(lrn).keys() == opt0.keys()
        assert all(torch.equal(_optim_snapshot(lrn)[k], opt0[k]) for k in opt0)
        assert lrn.sched.get_last_lr() == lr0 and lrn.steps == 1
        assert all(p.grad is None for p in lrn.policy.parameters())
        # A good step resets the count; two bad ones in a row abort.
        assert not lrn.update(batch, terms).skipped and lrn.nonfinite_in_a_row == 0
        assert lrn.update(bad, terms).skipped
        with pytest.raises(NonFiniteError, match="2 non-finite updates in a row"):
            lrn.update(bad, terms)


def test_save_load_continues_bit_identically(tiny_model_path, tmp_path):
    batches = [make_batch(seed=s, expert=[s % 2 == 0, False, True, False, False, True])
               for s in range(4)]
    terms = [LossTermSpec("ppo_clip", 1.0, "policy"), LossTermSpec("sft_ce", 0.3, "expert")]
    kw = dict(lr=1e-2, warmup_steps=1, total_steps=4, lr_schedule="cosine", min_lr_ratio=0.1,
              max_grad_norm=0.5, weight_decay=0.1)
    with learner(tiny_model_path, **kw) as lrn:
        [lrn.update(b, terms) for b in batches[:2]]
        lrn.save(str(tmp_path / "ckpt"))
        tail = [lrn.update(b, terms) for b in batches[2:]]
        want = weights(lrn)
    with learner(tiny_model_path, **kw) as lrn:
        lrn.load(str(tmp_path / "ckpt"))
        assert lrn.steps == 2
        resumed = [lrn.update(b, terms) for b in batches[2:]]
        got = weights(lrn)
        with pytest.raises(FileNotFoundError, match="not a learner checkpoint"):
            lrn.load(str(tmp_path))
    assert [s.lr for s in resumed] == [s.lr for s in tail]
    assert [s.loss for s in resumed] == [s.loss for s in tail]
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_named_weights_and_export_hf(tiny_model_path, tmp_path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    want = plain.state_dict()
    with learner(tiny_model_path) as lrn:
        got = weights(lrn)
        assert list(got) == list(want)  # same names, same order
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert all(t.device.type == "cpu" for t in got.values())
        lrn.update(make_batch(), [LossTermSpec("sft_ce", 1.0)])
        trained = weights(lrn)
        lrn.export_hf(str(tmp_path / "hf"))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert back.lm_head.weight is back.model.embed_tokens.weight  # still tied


def test_grad_checkpointing_and_model_factory(tiny_model_path):
    """Gradient checkpointing changes memory, not the update; a factory works like a path."""
    batch = make_batch()

    def factory():
        return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)

    out = []
    for model, ckpt in ((tiny_model_path, False), (factory, True)):
        with learner(model, grad_checkpointing=ckpt, **GRADIENT_STEP) as lrn:
            lrn.update(batch, [LossTermSpec("sft_ce", 1.0)])
            out.append(weights(lrn))
    assert_close_weights(out[0], out[1], atol=1e-6)
