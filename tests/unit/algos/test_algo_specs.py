"""The CHORD, Prefix-RFT and GRPO (DAPO filter) specs: what they hand the loop,
and the learner's token selection (`LossTermSpec.tokens` / `norm_tokens`)."""

import math

import pytest
import torch
from tolerances import fp32_bound

from rlft.algos.catalogue import build_algorithm
from rlft.algos.chord import expert_count
from rlft.algos.contract import LossTermSpec, keep_all, no_extra_rows, no_filter
from rlft.algos.prefix_rft import keep_top_entropy_prefix, split_samples
from rlft.algos.schedules import chord_mu
from rlft.batch.groups import varied_groups
from rlft.config import load_config
from rlft.data.demonstrations import Demonstrations
from rlft.run.wiring import build_prompts_for
from rlft.types import TrainBatch
from rlft.workers.learner import Learner, LearnerParams


def _cfg(*overrides):
    return load_config(None, ["model.name=tiny-random", "rollout.n=4",
                              "rollout.prompts_per_step=3", *overrides])


def _batch(resp, prefix, expert=None) -> TrainBatch:
    resp = torch.tensor(resp, dtype=torch.bool)
    B, L = resp.shape
    return TrainBatch(input_ids=torch.ones(B, L, dtype=torch.long),
                      attention_mask=torch.ones(B, L, dtype=torch.bool), response_mask=resp,
                      advantages=torch.zeros(B, L), group_id=torch.arange(B), policy_version=0,
                      prefix_mask=torch.tensor(prefix, dtype=torch.bool),
                      expert_mask=None if expert is None else torch.tensor(expert))


def test_token_mask_and_term_validation():
    b = _batch([[0, 1, 1, 1], [0, 0, 1, 1]], [[0, 1, 1, 0], [0, 0, 0, 0]])
    assert b.loss_mask("all").int().tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert b.loss_mask("prefix").int().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]
    assert b.loss_mask("sampled").int().tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    assert not b.with_(prefix_mask=None).loss_mask("prefix").any()
    with pytest.raises(ValueError, match="tokens must be one of all, sampled, prefix"):
        LossTermSpec("ppo_clip", 1.0, tokens="forced")
    with pytest.raises(ValueError, match="norm_tokens must be None or 'all'"):
        LossTermSpec("ppo_clip", 1.0, tokens="prefix", norm_tokens="sampled")


def test_keep_top_entropy_prefix_hand_worked():
    # Prefix tokens of sampled rows: (0,1) e=0.9, (0,2) e=0.1, (1,1) e=0.5, (1,2) e=0.7;
    # row 2 is a demonstration and never competes. frac 0.5 of 4 -> keep 0.9 and 0.7.
    b = _batch([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]],
               [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], expert=[False, False, True])
    ent = torch.tensor([[0.0, 0.9, 0.1, 5.0], [0.0, 0.5, 0.7, 5.0], [0.0, 9.0, 9.0, 0.0]])
    b = b.with_(advantages=torch.ones(3, 4))
    out = keep_top_entropy_prefix(b, ent, 0.5)
    # dropped prefix tokens get advantage 0; sampled tokens and demonstrations keep theirs
    assert out.advantages.int().tolist() == [[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]]
    # masks are untouched: dropped tokens stay in the normaliser and the KL/entropy terms
    assert torch.equal(out.response_mask, b.response_mask)
    assert torch.equal(out.prefix_mask, b.prefix_mask)


def test_split_samples():
    assert split_samples(8, 0.5) == (4, 4, 4)
    assert split_samples(8, 0.25) == (6, 2, 2)
    assert split_samples(6, 1.0) == (0, 6, 6)
    assert split_samples(4, 0.0) == (4, 0, 4)


def test_prefix_rft_batches_share_prefixes_per_group():
    cfg = _cfg("algo.name=prefix_rft", "algo.prefix.low_start=0.5", "algo.prefix.high_start=1.0")
    algo = build_algorithm(cfg)
    prompts = build_prompts_for(cfg)[0].next_batch()
    demos = Demonstrations("tiny-random")
    b = algo.make_batch(prompts, 3, 4)
    assert b.n == 2 and len(b.prompts) == 6  # per prompt: 2 plain + 2 prefixed, 1 request each
    assert b.group_id == (9, 9, 10, 10, 11, 11)  # 1 id per prompt, after steps 0..2
    for i, prompt in enumerate(prompts):
        plain, pre = b.prefix_ids[2 * i], b.prefix_ids[2 * i + 1]
        demo = demos.ids(prompt)[:-1]
        assert plain == () and 0 < len(pre) <= len(demo) and pre == demo[:len(pre)]
        assert b.prompts[2 * i] is prompt and b.prompts[2 * i + 1] is prompt
    assert algo.make_batch(prompts, 3, 4) == b  # seeded by (seed, step)
    mixed = build_algorithm(_cfg("algo.name=prefix_rft", "algo.prefix.group_by=prompt"))
    assert mixed.make_batch(prompts, 0, 4).group_id == (0, 0, 1, 1, 2, 2)
    # the estimator splits plain from prefixed rows (or not) and credits the prefix
    assert algo.advantage == mixed.advantage == "prefix_rft"
    assert algo.adv_params.base == "dr_grpo" and algo.adv_params.split_prefix
    assert not mixed.adv_params.split_prefix
    assert algo.token_filter is not no_filter and algo.add_rows is no_extra_rows
    assert "entropy" in algo.needs  # the token filter reads the sampling policy's entropy


def test_prefix_rft_sample_split_checks():
    # one prefixed sample of n (the paper's 1 of 8) is fine: its prefix is credited
    build_algorithm(_cfg("algo.name=prefix_rft", "algo.prefix.fraction=0.25"))
    with pytest.raises(ValueError, match="gives no prefixed sample"):
        build_algorithm(_cfg("algo.name=prefix_rft", "algo.prefix.fraction=0.1"))
    with pytest.raises(ValueError, match="leaves no plain sample"):
        build_algorithm(_cfg("algo.name=prefix_rft", "algo.prefix.fraction=1.0"))
    with pytest.raises(ValueError, match="wraps a critic-free estimator"):
        build_algorithm(_cfg("algo.name=prefix_rft", "algo.advantage=gae"))


def test_chord_terms_follow_mu_and_expert_rows_follow_ratio():
    algo = build_algorithm(_cfg("algo.name=chord", "algo.chord.warmup_steps=2",
                                "algo.chord.decay_steps=4", "algo.kl_coef=0.1"))
    for step in range(8):
        mu = chord_mu(step, 0.5, 0.02, 2, 4)
        w = {t.loss: t.weight for t in algo.terms(step)}
        assert w == pytest.approx({"ppo_clip": 1 - mu, "kl": 0.1 * (1 - mu), "chord_expert": mu})
        assert algo.step_metrics(step) == {"chord/mu": mu}
    assert algo.terms(0)[-1].params == {"phi": True, "cutoff_prob": None}
    assert "ref_logprobs" in algo.needs
    assert [expert_count(p, 0.2) for p in (16, 12, 8, 0)] == [4, 3, 2, 0]
    with pytest.raises(ValueError, match="expert_ratio=0 adds no demonstration rows"):
        build_algorithm(_cfg("algo.name=chord", "algo.chord.expert_ratio=0"))


def test_grpo_takes_the_dapo_filter_from_the_config():
    algo = build_algorithm(_cfg("algo.filter_groups=true", "algo.filter_rounds=3"))
    assert algo.keep_groups is varied_groups and algo.filter_rounds == 3
    assert build_algorithm(_cfg()).keep_groups is keep_all


def test_split_terms_with_joint_norm_equal_one_term(tiny_model_path):
    """ppo_clip over sampled + ppo_clip over prefix tokens, both normalised by all
    tokens, is exactly one ppo_clip over all tokens (same loss, same update)."""
    g = torch.Generator().manual_seed(3)
    B, L = 4, 16
    pos = torch.arange(L)[None, :]  # [1, L]
    am = pos < torch.tensor([16, 12, 14, 9])[:, None]  # [B, L] right-padded
    resp = am & (pos >= 3)
    batch = TrainBatch(
        input_ids=torch.where(am, torch.randint(0, 49152, (B, L), generator=g), 2),
        attention_mask=am, response_mask=resp,
        advantages=(torch.randn(B, 1, generator=g) * resp).contiguous(),  # [B, L]
        group_id=torch.zeros(B, dtype=torch.long), policy_version=0,
        prefix_mask=resp & (pos < 7))
    one = [LossTermSpec("ppo_clip", 1.0)]
    split = [LossTermSpec("ppo_clip", 1.0, tokens=t, norm_tokens="all")
             for t in ("sampled", "prefix")]
    own = [LossTermSpec("ppo_clip", 1.0, tokens=t) for t in ("sampled", "prefix")]
    results = []
    for terms in (one, split, own):
        lrn = Learner(tiny_model_path, LearnerParams(lr=1e-2, max_grad_norm=0.0))
        try:
            stats = lrn.update(batch, terms)
            results.append((stats.loss, dict(lrn.named_weights())))
        finally:
            lrn.shutdown()
    (l1, w1), (l2, w2), (l3, _) = results
    # The two losses are float32 sums of the same per-token -A (ratio 1) in different
    # orders, so they differ by a few eps * max|A| on some CPUs (issue #25); 100 of
    # that leaves room for any kernel. The gradients match bit for bit (disjoint
    # masks add zeros), so the weights keep the tight bound.
    assert l2 == pytest.approx(
        l1, abs=fp32_bound(batch.advantages))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-6, rtol=0, msg=name)
    assert not math.isclose(l3, l1, rel_tol=1e-3)  # own counts weigh the halves differently
