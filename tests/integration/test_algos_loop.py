"""CHORD, Prefix-RFT and DAPO's dynamic sampling through the real loop on the
tiny random model: each test checks the algorithm's own mechanics in the
batches and loss terms the training loop hands the learner."""

import json
import math
from pathlib import Path

import pytest
import torch
from loop_helpers import ray_per_module  # noqa: F401 (autouse fixture)
from tolerances import fp32_bound

from rlft.algos.chord import expert_count
from rlft.algos.schedules import chord_mu, prefix_window, select_top_entropy
from rlft.config import load_config
from rlft.data.demonstrations import Demonstrations
from rlft.loop import TrainingLoop

HERE = Path(__file__).parent
DISTINCT = f"{HERE / 'length_reward.py'}:distinct_chars"
ODD = f"{HERE / 'algo_rewards.py'}:odd_varies"


def _cfg(tmp_path, model_path, name, reward=DISTINCT, extra=()):
    return load_config(None, [
        f"model.name={model_path}", "rollout.engine=hf", "rollout.prompts_per_step=2",
        "rollout.n=4", "rollout.max_new_tokens=8", f"reward.terms=[{{name: '{reward}'}}]",
        "reward.num_workers=0", "train.steps=2", "train.lr=1.0e-3", f"algo.name={name}",
        f"logging.run_dir={tmp_path}", f"logging.run_name={name}", "logging.loggers=[jsonl]",
        "ray.num_cpus=2", *extra,
    ])


class Recording(TrainingLoop):
    """The real trainer, keeping what crossed the advantage and update stages."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.scored, self.batches, self.entropy, self.terms, self.stats = [], [], [], [], []
        self.rounds = []

    def score(self, rollouts):
        scored = super().score(rollouts)
        self.rounds.append(scored)
        return scored

    def advantages(self, scored, prompts, step):
        batch, shaped = super().advantages(scored, prompts, step)
        self.scored.append(scored)
        if "entropy" in self.algo.needs:  # entropy before the filter, same weights
            _, ent = self._logprobs(batch.with_(response_mask=_response(scored, batch)), False)
            self.entropy.append(ent)
        return batch, shaped

    def update(self, role, batch):
        stats = super().update(role, batch)
        if role.name == "policy":
            self.batches.append(batch)
            self.terms.append(role.terms(self.step))
            self.stats.append(stats)
        return stats


def _run(cfg):
    trainer = Recording(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    return trainer, history


def _response(scored, batch) -> torch.Tensor:
    """The unfiltered response mask [B, L], rebuilt from the rollouts."""
    ro = scored.rollouts
    mask = torch.zeros_like(batch.response_mask)
    for b in range(len(ro)):
        p = len(ro.prompt_ids[b])
        mask[b, p:p + len(ro.response_ids[b])] = True
    return mask


def _metrics(cfg):
    path = Path(cfg.logging.run_dir) / cfg.logging.run_name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chord_mixes_expert_rows_and_weights_them_by_mu(tmp_path, tiny_model_path):
    cfg = _cfg(tmp_path, tiny_model_path, "chord", extra=[
        "algo.chord.mu_peak=0.6", "algo.chord.mu_valley=0.1", "algo.chord.warmup_steps=0",
        "algo.chord.decay_steps=2", "algo.chord.expert_ratio=0.2"])
    trainer, history = _run(cfg)
    demos = Demonstrations(tiny_model_path)
    for step, (batch, terms, stats) in enumerate(zip(trainer.batches, trainer.terms,
                                                     trainer.stats)):
        mu = chord_mu(step, 0.6, 0.1, 0, 2)  # 0.6, then 0.35 half-way down the cosine
        assert mu == pytest.approx([0.6, 0.35][step])
        weights = {t.loss: (t.weight, t.rows) for t in terms}
        assert weights == {"ppo_clip": (pytest.approx(1 - mu), "policy"),
                           "chord_expert": (pytest.approx(mu), "expert")}
        # The learner summed exactly those weights: loss = (1-mu) ppo + mu expert.
        m = stats.metrics
        parts = ((1 - mu) * m["ppo_clip/loss"], mu * m["chord_expert/loss"])
        # The step adds the weighted terms in float32, this sum the metrics in float64.
        assert stats.loss == pytest.approx(sum(parts), abs=fp32_bound(stats.loss, *parts))
        assert 0 < m["chord_expert/phi"] <= 0.25  # phi = p(1-p) was applied

        # 8 sampled rows + 2 demonstrations: 2 / 10 = expert_ratio.
        expert = batch.expert_mask
        assert int(expert.sum()) == expert_count(8, 0.2) == 2
        assert int((~expert).sum()) == 8 and expert[-2:].all()
        ro = trainer.scored[step].rollouts
        for j, b in enumerate(expert.nonzero().flatten().tolist()):
            prompt = ro.prompts[j % len(ro.prompts)]  # the step's prompts, in order
            demo = demos.ids(prompt)
            p = len(prompt.prompt_ids)
            assert batch.input_ids[b, p:p + len(demo)].tolist() == list(demo)
            assert batch.response_mask[b].sum() == len(demo)
            assert not batch.advantages[b].any()  # demonstrations carry no advantage
        assert batch.advantages[~expert].abs().sum() > 0
    assert [r["chord/mu"] for r in _metrics(cfg)] == pytest.approx([0.6, 0.35])
    assert [m.extra["chord/mu"] for m in history] == pytest.approx([0.6, 0.35])


def test_prefix_rft_forces_demonstration_prefixes_and_keeps_top_entropy(tmp_path,
                                                                      tiny_model_path):
    frac = 0.25
    cfg = _cfg(tmp_path, tiny_model_path, "prefix_rft", extra=[
        "algo.prefix.fraction=0.5", "algo.prefix.low_start=0.4", "algo.prefix.high_start=1.0",
        "algo.prefix.low_end=0.2", "algo.prefix.high_end=0.6", "algo.prefix.schedule=linear",
        f"algo.prefix.entropy_top_frac={frac}", "algo.prefix.clip_low=0.1",
        "algo.prefix.clip_high=0.3"])
    trainer, history = _run(cfg)
    demos = Demonstrations(tiny_model_path)
    for step, (scored, batch, ent, terms, stats) in enumerate(zip(
            trainer.scored, trainer.batches, trainer.entropy, trainer.terms, trainer.stats)):
        ro = scored.rollouts
        low, high = prefix_window(step, 2, 0.4, 0.2, 1.0, 0.6, "linear")
        assert history[step].extra["prefix/ratio_low"] == pytest.approx(low)
        prefix = torch.zeros_like(batch.response_mask)  # forced tokens, before the filter
        groups: dict[int, set] = {}
        for b in range(len(ro)):
            prompt, k, p = ro.row(b), ro.prefix_len[b], len(ro.prompt_ids[b])
            demo = demos.ids(prompt)[:-1]
            key = (prompt.uid, tuple(ro.response_ids[b][:k]))
            groups.setdefault(ro.group_id[b], set()).add(key)
            if k:
                assert ro.response_ids[b][:k] == demo[:k]  # the response starts with the prefix
                assert low - 1 / len(demo) <= k / len(demo) <= high + 1e-6
                prefix[b, p:p + k] = True
        # Two samples with and two without a prefix per prompt, all in the prompt's group.
        assert sorted(k > 0 for k in ro.prefix_len) == [False] * 4 + [True] * 4
        assert all(len(keys) == 2 for keys in groups.values())  # plain + one shared prefix
        assert len(groups) == 2 and sorted(ro.group_id.count(g) for g in groups) == [4] * 2
        assert torch.equal(batch.group_id, torch.tensor(ro.group_id))
        resp = _response(scored, batch)
        assert torch.equal(batch.response_mask, resp)  # the filter narrows no mask
        assert torch.equal(batch.prefix_mask, prefix)
        # Entropy selection: ceil(frac * prefix tokens) keep their advantage, the
        # highest-entropy ones; the others get 0 (and stay in every mask).
        n = int(prefix.sum())
        kept = select_top_entropy(ent, prefix, frac)  # ties (shared prefixes) broken there
        assert n > 0 and int(kept.sum()) == math.ceil(frac * n)
        assert float(ent[kept].min()) >= float(ent[prefix & ~kept].max())
        reward = scored.rewards
        has = torch.tensor([k > 0 for k in ro.prefix_len])
        dr = (batch.advantages * (resp & ~prefix)).sum(-1) / (resp & ~prefix).sum(-1)
        for g in groups:
            rows = batch.group_id == g
            plain, pre = rows & ~has, rows & has
            for sub in (plain, pre):  # Dr.GRPO within (prompt, prefix): reward - its mean
                torch.testing.assert_close(dr[sub], reward[sub] - reward[sub].mean())
            push = (reward - reward[plain].mean()) / int(pre.sum())  # the prefix's own advantage
            for b in pre.nonzero().flatten().tolist():
                torch.testing.assert_close(batch.advantages[b][kept[b]],
                                           push[b].expand(int(kept[b].sum())))
                assert not batch.advantages[b][prefix[b] & ~kept[b]].any()

        clip = {t.tokens: (t.params["clip_low"], t.params["clip_high"], t.norm_tokens)
                for t in terms if t.loss == "ppo_clip"}
        assert clip == {"sampled": (0.2, 0.2, "all"), "prefix": (0.1, 0.3, "all")}
        parts = (stats.metrics["ppo_clip#0/loss"], stats.metrics["ppo_clip#1/loss"])
        assert stats.loss == pytest.approx(sum(parts), abs=fp32_bound(stats.loss, *parts))


def test_dapo_dynamic_sampling_drops_uniform_groups(tmp_path, tiny_model_path):
    cfg = _cfg(tmp_path, tiny_model_path, "grpo", reward=ODD, extra=[
        "algo.filter_groups=true", "algo.filter_rounds=4", "train.steps=1",
        "train.seed=3"])  # seed 3 draws answers 20, 17 then 10, 9: one refill round
    trainer, history = _run(cfg)
    kept, batch = trainer.scored[0], trainer.batches[0]
    sampled = {ro.row(b).answer for ro in (r.rollouts for r in trainer.rounds)
               for b in range(len(ro))}
    assert any(int(a) % 2 == 0 for a in sampled)  # the filter had groups to drop
    assert history[0].extra["filter/rounds"] == len(trainer.rounds)
    answers = {kept.rollouts.row(b).answer for b in range(len(kept.rollouts))}
    assert answers and all(int(a) % 2 == 1 for a in answers)  # even-answer groups are gone
    gids = set(kept.rollouts.group_id)
    assert len(batch.group_id) == 4 * len(gids)
    assert history[0].extra["filter/kept_groups"] == len(gids) <= 2
    assert 2 <= history[0].extra["filter/rounds"] <= 4  # a dropped group was refilled
    if len(gids) == 2:  # two rounds' groups, renumbered apart
        assert len({kept.rollouts.row(b).uid for b in range(len(kept.rollouts))}) == 2
    for g in gids:
        rewards = kept.rewards[torch.tensor(kept.rollouts.group_id) == g]
        assert rewards.max() > rewards.min()
