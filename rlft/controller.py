"""The driver: one process that runs the six calls of a training step.

prompts -> rollout -> rewards -> advantages -> learner update -> weight sync.
Nothing here branches on the algorithm; everything an algorithm changes is a
field of its `Algorithm` spec (rlft/algos/spec.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from rlft import checkpoint
from rlft.algos.spec import Algorithm, LossTermSpec, build_algorithm
from rlft.batching import collate, with_advantages
from rlft.build import build_pools, build_prompts_for, sampling_params
from rlft.config import Config
from rlft.runs import RunFolder
from rlft.tracking import make_sinks
from rlft.types import PromptBatch, Rollouts, ScoredRollouts, StepMetrics, TrainBatch

log = logging.getLogger("rlft")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = time.perf_counter() - start
        return out


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        self.algo: Algorithm = build_algorithm(cfg)  # fails on bad algo settings before loading
        self.run = RunFolder.create(cfg, resume)
        self.sampler, self.pad_id = build_prompts_for(cfg)
        self.pools = build_pools(cfg, self.algo)
        self.step, self.version = 0, 0
        if self.run.resume_from is not None:
            self._restore(self.run.resume_from)
        self.history: list[StepMetrics] = []

    # -- the loop -----------------------------------------------------------
    def train(self) -> list[StepMetrics]:
        cfg = self.cfg
        sinks = make_sinks(cfg.logging.loggers, self.run.path, self.run.name,
                           cfg.logging.wandb_project, self.run.config_dict,
                           cfg.train.steps, self.step)
        try:
            while self.step < cfg.train.steps:
                metrics = self.train_step()
                self.history.append(metrics)
                for sink in sinks:
                    sink.log(metrics)
                every = cfg.checkpoint.every
                if (every and self.step % every == 0) or self.step == cfg.train.steps:
                    self.save()
        finally:
            for sink in sinks:
                sink.close()
        return self.history

    def train_step(self) -> StepMetrics:
        t = StageTimer()
        step = self.step
        batch = t.run("prompts", self.algo.make_batch, self.sampler.next_batch(), step,
                      self.cfg.rollout.n)
        rollouts = t.run("rollout", self.generate, batch, step)
        scored = t.run("reward", self.score, rollouts)
        train = t.run("advantage", self.advantages, scored)
        terms = self.algo.terms(step)
        stats = t.run("update", self.update, train, terms)
        self.version += 1
        t.run("sync", self.sync_weights)
        self.step += 1
        return self._metrics(step, scored, stats, t.seconds)

    # -- the six calls ------------------------------------------------------
    def generate(self, batch: PromptBatch, step: int) -> Rollouts:
        params = sampling_params(self.cfg, seed=self.cfg.train.seed * 1_000_003 + step)
        shards = _split(batch, len(self.pools.rollout))
        parts = ray.get([w.generate.remote(s, params)
                         for w, s in zip(self.pools.rollout, shards) if s.prompts])
        out = Rollouts.concat(parts)
        if out.policy_version != self.version:
            raise RuntimeError(f"rollouts came from policy version {out.policy_version}, "
                               f"expected {self.version}: a weight sync was lost")
        return out

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        return ray.get(self.pools.reward.score.remote(rollouts))

    def advantages(self, scored: ScoredRollouts) -> TrainBatch:
        batch, token_rewards = collate(scored, self.pad_id)
        if self.algo.needs_ref:
            ref, _ = self._logprobs(batch, ref=True)
            batch = batch.with_(ref_logprobs=ref)
        return with_advantages(batch, token_rewards, self.algo.advantage, self.algo.adv_params)

    def update(self, batch: TrainBatch, terms: tuple[LossTermSpec, ...]):
        world = len(self.pools.learners)
        stats = ray.get([lrn.update.remote(_rows(batch, r, world), terms)
                         for r, lrn in enumerate(self.pools.learners)])
        return stats[0]  # every rank reports the same reduced figures

    def sync_weights(self) -> None:
        # Gathering full weights is collective: every rank takes part, rank 0 publishes.
        update = ray.get([lrn.weight_update.remote(self.version)
                          for lrn in self.pools.learners])[0]
        ray.get([w.load_weights.remote(update) for w in self.pools.rollout])

    # -- helpers ------------------------------------------------------------
    def _logprobs(self, batch: TrainBatch, ref: bool) -> tuple[torch.Tensor, torch.Tensor]:
        world = len(self.pools.learners)
        parts = ray.get([lrn.compute_logprobs.remote(_rows(batch, r, world), ref)
                         for r, lrn in enumerate(self.pools.learners)])
        lp = torch.zeros_like(batch.advantages)
        ent = torch.zeros_like(batch.advantages)
        for r, (p_lp, p_ent) in enumerate(parts):
            lp[r::world], ent[r::world] = p_lp, p_ent
        return lp, ent

    def save(self) -> Path:
        state = checkpoint.TrainerState(step=self.step, policy_version=self.version,
                                        sampler=self.sampler.state_dict())

        def save_learner(path: str) -> None:
            ray.get([lrn.save.remote(path) for lrn in self.pools.learners])

        return checkpoint.save(self.run.ckpt_root, state, save_learner, self.cfg.checkpoint.keep)

    def _restore(self, ckpt: Path) -> None:
        state = checkpoint.load_state(ckpt)
        ray.get([lrn.load.remote(str(ckpt / "learner")) for lrn in self.pools.learners])
        self.sampler.load_state_dict(state.sampler)
        self.step, self.version = state.step, state.policy_version
        self.sync_weights()
        log.info("resumed from %s at step %d (policy version %d)", ckpt, self.step, self.version)

    def _metrics(self, step: int, scored: ScoredRollouts, stats, seconds) -> StepMetrics:
        ro = scored.rollouts
        lengths = torch.tensor([len(r) for r in ro.response_ids], dtype=torch.float32)
        comps = {k: float(v[~torch.isnan(v)].mean()) for k, v in scored.components.items()
                 if (~torch.isnan(v)).any()}
        total = sum(seconds.values())
        return StepMetrics(
            step=step, policy_version=ro.policy_version,
            reward_mean=float(scored.rewards.mean()), reward_std=float(scored.rewards.std()),
            response_len_mean=float(lengths.mean()), loss=stats.loss, grad_norm=stats.grad_norm,
            entropy=stats.entropy, kl=float(stats.metrics.get("kl", 0.0)),
            clip_frac=float(stats.metrics.get("clip_frac", 0.0)),
            tokens_per_s=float(lengths.sum()) / max(total, 1e-9), stage_seconds=dict(seconds),
            reward_components=comps, reward_failures=scored.failures,
            extra={"lr": stats.lr, **self.algo.step_metrics(step)},
        )

    def close(self) -> None:
        self.pools.kill()


def _split(batch: PromptBatch, k: int) -> list[PromptBatch]:
    """Contiguous prompt shards, one per rollout worker; groups stay whole."""
    size = -(-len(batch.prompts) // k)
    return [PromptBatch(prompts=batch.prompts[i:i + size], prefix_ids=batch.prefix_ids[i:i + size],
                        group_id=batch.group_id[i:i + size], n=batch.n)
            for i in range(0, k * size, size)]


def _rows(batch: TrainBatch, rank: int, world: int) -> TrainBatch:
    """Rank `rank`'s data-parallel shard: rows rank, rank+world, ..."""
    return batch if world == 1 else batch.select(slice(rank, None, world))
