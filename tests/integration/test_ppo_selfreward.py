"""PPO with a critic and Self-Rewarding PPO on the tiny random model: the critic
on its own, the self-reward against plain transformers, and both loops."""

import json
import statistics
from pathlib import Path

import pytest
import torch
from loop_helpers import ray_per_module  # noqa: F401 (autouse fixture)
from transformers import AutoModelForCausalLM

from rlft.algos.catalogue import build_algorithm
from rlft.algos.ppo import critic_terms
from rlft.batch.collate import collate
from rlft.config import load_config
from rlft.data.prompts import build_prompts
from rlft.loop import TrainingLoop
from rlft.models import load_tokenizer
from rlft.types import Rollouts, ScoredRollouts, TrainBatch
from rlft.workers.critic import Critic, CriticParams
from rlft.workers.self_reward import SelfRewardScorer

REWARD = f"{Path(__file__).with_name('length_reward.py')}:distinct_chars"


def _rollouts(model_path, responses, group_id) -> Rollouts:
    """Hand-made rollouts: one prompt per row, fixed response ids."""
    tok = load_tokenizer(model_path)
    rows = [{"prompt": f"{i} + {i} =", "answer": str(2 * i)} for i in range(len(responses))]
    prompts = build_prompts(rows, tok).prompts
    n = len(prompts)
    return Rollouts(prompt_index=tuple(range(n)), prompts=prompts,
                    prompt_ids=tuple(p.prompt_ids for p in prompts),
                    response_ids=tuple(tuple(r) for r in responses),
                    response_text=tuple(tok.decode(r) for r in responses),
                    rollout_logprobs=((),) * n, prefix_len=(0,) * n, finish_reason=("stop",) * n,
                    group_id=tuple(group_id), policy_version=0)


def _sum_log_ratio(sft, base, prompt_ids, response_ids) -> float:
    """Independent reference: one unpadded row through each model, log_softmax, sum."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])  # [1, L]
    p = len(prompt_ids)
    total = 0.0
    with torch.no_grad():
        for model, sign in ((sft, 1.0), (base, -1.0)):
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # [L, V]
            for t in range(p, ids.shape[1]):  # token t is predicted at position t - 1
                total += sign * float(logp[t - 1, ids[0, t]])
    return total


def test_self_reward_equals_a_plain_transformers_log_ratio(tmp_path, tiny_model_path):
    # pi_SFT: the tiny model with its weights perturbed (any other model will do).
    sft_path = tmp_path / "sft"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(sft_path)
    load_tokenizer(tiny_model_path).save_pretrained(sft_path)
    responses = [[500, 600, 700], [42], [900, 17, 3, 4, 5], [], [8, 9]]
    groups = [0, 0, 0, 1, 1]
    ro = _rollouts(tiny_model_path, responses, groups)
    sft = AutoModelForCausalLM.from_pretrained(sft_path, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    want = [_sum_log_ratio(sft, base, ro.prompt_ids[b], responses[b]) for b in range(len(ro))]
    assert want[3] == 0.0 and abs(want[0]) > 0.1  # the perturbation changed the scores

    # A small micro-batch budget splits the batch: the result must not depend on it.
    scorer = SelfRewardScorer(str(sft_path), tiny_model_path, norm="none",
                              micro_batch_tokens=24)
    got = scorer.score(ro)
    assert got.rewards.tolist() == pytest.approx(want, abs=1e-4)
    assert got.components["log_ratio"].tolist() == pytest.approx(want, abs=1e-4)

    scorer.norm = "token_mean"
    lengths = [max(len(r), 1) for r in responses]
    assert scorer.score(ro).rewards.tolist() == pytest.approx(
        [w / n for w, n in zip(want, lengths)], abs=1e-4)

    scorer.norm = "group_zscore"  # group 0: three rows; group 1: one active row (8, 9) -> 0
    g0 = want[:3]
    mean, std = statistics.mean(g0), statistics.stdev(g0)
    expect = [(w - mean) / (std + 1e-6) for w in g0] + [0.0, 0.0]
    assert scorer.score(ro).rewards.tolist() == pytest.approx(expect, abs=1e-4)


def _train_batch(model_path) -> TrainBatch:
    responses = [[500, 600, 700, 800], [42, 43], [900, 17, 3]]
    ro = _rollouts(model_path, responses, [0, 1, 2])
    batch, _ = collate(ScoredRollouts(ro, torch.zeros(3), {}), pad_id=0)
    gen = torch.Generator().manual_seed(0)
    returns = torch.randn(batch.input_ids.shape, generator=gen) + 1.0  # [B, L] targets
    return batch.with_(returns=torch.where(batch.response_mask, returns, 0.0))


def test_critic_values_align_and_the_value_loss_falls(tiny_model_path):
    critic = Critic(tiny_model_path, CriticParams(lr=3e-3, micro_batch_tokens=40))
    try:
        batch = _train_batch(tiny_model_path)
        v = critic.values(batch)
        assert not v[~batch.response_mask].any() and v[batch.response_mask].abs().sum() > 0
        # values[:, t] reads tokens < t only: changing the last response token of row 0
        # changes nothing at or before it.
        last = int(batch.response_mask[0].nonzero().max())
        ids = batch.input_ids.clone()
        ids[0, last] = 7
        assert torch.equal(critic.values(batch.with_(input_ids=ids))[0], v[0])

        terms = critic_terms(load_config(None, ["algo.ppo.value_clip=0.2"]))
        losses = []
        for _ in range(6):
            # Each PPO step clips around its own rollout-time values.
            stats = critic.update(batch.with_(old_values=critic.values(batch)), terms)
            losses.append(stats.metrics["value_clip/loss"])
            assert stats.loss == pytest.approx(losses[-1]) and stats.grad_norm > 0
        assert losses[-1] < 0.5 * losses[0], losses
        assert "value_clip/value_clip_frac" in stats.metrics
        assert stats.flat("critic")["critic/loss"] == stats.loss
    finally:
        critic.shutdown()


def test_critic_checkpoint_round_trip(tmp_path, tiny_model_path):
    batch = _train_batch(tiny_model_path)
    terms = critic_terms(load_config(None, []))
    first = Critic(tiny_model_path, CriticParams(lr=3e-3))
    try:
        first.update(batch.with_(old_values=first.values(batch)), terms)
        first.save(str(tmp_path / "critic"))
        want = first.values(batch)
    finally:
        first.shutdown()
    second = Critic(tiny_model_path, CriticParams(lr=3e-3))
    try:
        assert not torch.equal(second.values(batch), want)  # a fresh head differs
        second.load(str(tmp_path / "critic"))
        assert torch.equal(second.values(batch), want) and second.steps == 1
    finally:
        second.shutdown()


def _cfg(tmp_path, model_path, name, extra=()):
    return load_config(None, [
        f"model.name={model_path}", "rollout.engine=hf", "rollout.prompts_per_step=2",
        "rollout.n=2", "rollout.max_new_tokens=8", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=0", "train.steps=2", "train.lr=1.0e-3", f"algo.name={name}",
        "algo.lam=0.9", "algo.ppo.critic_lr=1.0e-3", f"logging.run_dir={tmp_path}",
        f"logging.run_name={name}", "logging.loggers=[jsonl]", "ray.num_cpus=2", *extra,
    ])


class Recording(TrainingLoop):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.batches = []

    def update(self, role, batch):
        if role.name == "policy":
            self.batches.append(batch)
        return super().update(role, batch)


def _whiten(x, mask):
    return (x - x[mask].mean()) / (x[mask].std() + 1e-6)


def test_ppo_loop_feeds_the_critic_and_logs_its_metrics(tmp_path, tiny_model_path):
    cfg = _cfg(tmp_path, tiny_model_path, "ppo", extra=[
        "algo.kl_coef=0.05", "algo.ppo.kl_in_reward=true", "algo.kl_estimator=k1"])
    trainer = Recording(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert [m.step for m in history] == [0, 1]
    for batch in trainer.batches:
        mask = batch.response_mask
        assert batch.old_values is not None and batch.old_values[mask].abs().sum() > 0
        assert not batch.old_values[~mask].any()
        # GAE ran on the critic's values: returns - values is the raw advantage, and the
        # batch's advantages are it whitened.
        raw = torch.where(mask, batch.returns - batch.old_values, 0.0)
        assert torch.allclose(batch.advantages[mask], _whiten(raw, mask)[mask], atol=1e-4)
        assert batch.old_logprobs is not None and batch.ref_logprobs is not None
    rows = [json.loads(line) for line in
            (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for key in ("critic/loss", "critic/grad_norm", "critic/value_clip/value_error",
                    "critic/value_clip/value_clip_frac", "kl_reward/kl", "time/critic"):
            assert key in r, key
        assert r["critic/grad_norm"] > 0
    assert rows[0]["kl_reward/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    ckpt = tmp_path / "ppo" / "checkpoints" / "step-000002"
    assert (ckpt / "critic" / "learner.json").is_file()  # the critic is checkpointed too


def test_self_rewarding_ppo_trains_its_sft_model_then_runs_ppo(tmp_path, tiny_model_path):
    cfg = _cfg(tmp_path, tiny_model_path, "self_rewarding_ppo", extra=[
        "train.steps=1", "sft.steps=3", "sft.batch_size=4", "sft.lr=1.0e-2",
        "algo.self_reward.norm=group_zscore"])
    assert [s.kind for s in build_algorithm(cfg).stages] == ["sft"]  # no sft_model: a stage first
    trainer = TrainingLoop(cfg)
    try:
        sft = tmp_path / "self_rewarding_ppo" / "sft"
        assert trainer.algo.reward_args["sft_model"] == str(sft)
        assert trainer.algo.policy_model == str(sft)  # init_from_sft
        history = trainer.train()
    finally:
        trainer.close()
    assert (sft / "config.json").is_file()
    m = history[0]
    assert "log_ratio" in m.reward_components and m.reward_failures.total == 0
    # group_zscore: each prompt's two samples get rewards +-1/sqrt(2) (or 0 when equal).
    assert abs(m.reward_mean) < 1e-5 and "critic/loss" in m.extra
