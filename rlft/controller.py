"""The driver: one process that runs the six calls of a training step.

prompts -> rollout -> rewards -> advantages -> learner update -> weight sync.
Nothing here branches on the algorithm; everything an algorithm changes is a
field of its `Algorithm` spec (rlft/algos/spec.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
import torch

from rlft import checkpoint
from rlft.algos.spec import Algorithm, LossTermSpec, build_algorithm
from rlft.batching import (
    add_expert_rows,
    collate,
    first_groups,
    merge_rounds,
    num_groups,
    take,
    varied_groups,
    with_advantages,
)
from rlft.build import build_pools, build_prompts_for, build_weight_sync, sampling_params
from rlft.config import Config
from rlft.evaluate import evaluate, spec_from
from rlft.runs import RunFolder
from rlft.tracking import make_sinks
from rlft.types import PromptBatch, Rollouts, ScoredRollouts, StepMetrics, TrainBatch
from rlft.updates import UpdatePlan, mean_stats, minibatches
from rlft.workers.rollout import SamplingParams

log = logging.getLogger("rlft")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        # Summed: a stage may run several times in one step (dynamic sampling).
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return out


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        self.algo: Algorithm = build_algorithm(cfg)  # fails on bad algo settings before loading
        self.run = RunFolder.create(cfg, resume)
        if self.algo.prepare is not None:  # a stage the algorithm needs first (e.g. SFT)
            self.algo = self.algo.prepare(self.run.path)
        self.sampler, self.pad_id = build_prompts_for(cfg)
        self.eval_prompts = build_prompts_for(cfg, cfg.data.eval_split)[0].prompts[
            :cfg.train.eval_prompts or None] if cfg.train.eval_every else ()
        self.pools = build_pools(cfg, self.algo)
        self.weights = build_weight_sync(cfg, self.pools)  # rollout.weight_transport
        self.step, self.version = 0, 0
        self.plan = UpdatePlan(cfg.train.epochs, cfg.train.minibatches, cfg.train.seed)
        self.colocated = cfg.rollout.mode == "colocated"  # rollout sleeps in the learner phase
        if self.run.resume_from is not None:
            self._restore(self.run.resume_from)
        self.history: list[StepMetrics] = []
        self._adv_metrics: dict[str, float] = {}  # the spec's reward shaping, this step

    # -- the loop -----------------------------------------------------------
    def train(self) -> list[StepMetrics]:
        cfg = self.cfg
        sinks = make_sinks(cfg.logging.loggers, self.run.path, self.run.name,
                           cfg.logging.wandb_project, self.run.config_dict,
                           cfg.train.steps, self.step)
        try:
            while self.step < cfg.train.steps:
                metrics = self.train_step()
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    extra = {f"eval/{k}": v for k, v in self.evaluate().items()}
                    metrics = replace(metrics, extra={**metrics.extra, **extra})
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
        batch, scored, kept, extra = self.collect(step, t)
        self._adv_metrics = {}
        if self.colocated:  # the learner phase gets the rollout engines' accelerator memory
            t.run("sleep", self._rollout_all, "sleep")
        try:
            train = t.run("advantage", self.advantages, kept, batch, step)
            terms = self.algo.terms(step)
            stats = t.run("update", self.update, train, terms)
            if self.algo.needs_critic:
                extra = {**extra, **t.run("critic", self.update_critic, train).flat()}
        finally:  # awake before the sync (and after a failed update, for whoever goes on)
            if self.colocated:
                t.run("wake", self._rollout_all, "wake")
        self.version += 1
        t.run("sync", self.sync_weights)
        self.step += 1
        return self._metrics(step, scored, stats, t.seconds, {**extra, **self._adv_metrics})

    def collect(self, step: int, t: StageTimer
                ) -> tuple[PromptBatch, ScoredRollouts, ScoredRollouts, dict[str, float]]:
        """prompts -> rollout -> reward. With the spec's `filter_groups` (DAPO dynamic
        sampling) groups whose rewards are all equal are dropped, and up to
        `filter_rounds` prompt batches are drawn to refill the first round's number
        of groups. Returns the first PromptBatch, every scored sample (for the
        metrics) and the samples to train on, plus filter metrics."""
        algo, batches, rounds, kept = self.algo, [], [], []
        for r in range(algo.filter_rounds if algo.filter_groups else 1):
            batch = t.run("prompts", algo.make_batch, self.sampler.next_batch(), step,
                          self.cfg.rollout.n)
            batches.append(batch)
            seed = self.cfg.train.seed * 1_000_003 + step + r * 1_000_000_007
            rollouts = t.run("rollout", self.generate, batch, step,
                             sampling_params(self.cfg, seed=seed))
            rounds.append(t.run("reward", self.score, rollouts))
            if not algo.filter_groups:
                return batch, rounds[0], rounds[0], {}
            kept.append(take(rounds[-1], varied_groups(rounds[-1])))
            if sum(num_groups(k) for k in kept) >= num_groups(rounds[0]):
                break
        train = first_groups(merge_rounds(kept), num_groups(rounds[0]))
        extra = {"filter/kept_groups": float(num_groups(train)), "filter/rounds": len(rounds)}
        if len(train.rollouts) == 0:
            # Every group was uniform: all advantages are zero, so the first round
            # is as good as none (only KL / entropy terms act) and keeps the step whole.
            train = rounds[0]
        return batches[0], merge_rounds(rounds), train, extra

    # -- the six calls ------------------------------------------------------
    def generate(self, batch: PromptBatch, step: int,
                 params: SamplingParams | None = None) -> Rollouts:
        params = params or sampling_params(self.cfg, seed=self.cfg.train.seed * 1_000_003 + step)
        shards = _split(batch, len(self.pools.rollout))

        def run() -> list[Rollouts]:
            return ray.get([w.generate.remote(s, params)
                            for w, s in zip(self.pools.rollout, shards) if s.prompts])

        parts = run()
        if any(p.policy_version != self.version for p in parts):
            # A worker that Ray restarted (ray.max_restarts) holds its initial weights:
            # send the current ones and generate again (seeded: the same samples).
            log.warning("rollouts came from policy versions %s, expected %d: a rollout worker "
                        "was restarted; re-sending the weights and generating again",
                        sorted({p.policy_version for p in parts}), self.version)
            # Its broadcast group membership is gone too: the group is rebuilt first.
            self.sync_weights(rejoin=True)
            parts = run()
        out = Rollouts.concat(parts)
        if out.policy_version != self.version:
            raise RuntimeError(f"rollouts came from policy version {out.policy_version}, "
                               f"expected {self.version}: a weight sync was lost")
        return out

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        return ray.get(self.pools.reward.score.remote(rollouts))

    def advantages(self, scored: ScoredRollouts, prompts: PromptBatch | None = None,
                   step: int = 0) -> TrainBatch:
        if self.algo.expert_rows is not None and prompts is not None:
            scored = add_expert_rows(scored, self.algo.expert_rows(prompts, step))
        batch, token_rewards = collate(scored, self.pad_id)
        if self.algo.needs_ref:
            ref, _ = self._logprobs(batch, ref=True)
            batch = batch.with_(ref_logprobs=ref)
        entropy = None
        # Several updates per batch: PPO's ratio is taken against the policy that
        # sampled (this version), not against each update's starting point.
        if self.algo.needs_old_logprobs or self.plan.updates > 1:
            old, entropy = self._logprobs(batch, ref=False)
            batch = batch.with_(old_logprobs=old)
        if self.algo.needs_critic:
            batch = batch.with_(values=self.values(batch))
        if self.algo.shape_rewards is not None:
            token_rewards, shaped = self.algo.shape_rewards(batch, token_rewards)
            self._adv_metrics.update(shaped)
        batch = with_advantages(batch, token_rewards, self.algo.advantage, self.algo.adv_params)
        if self.algo.token_filter is not None:
            if entropy is None:  # the policy the update starts from (the pass above, if any)
                _, entropy = self._logprobs(batch, ref=False)
            batch = self.algo.token_filter(batch, entropy)
        return batch

    def update(self, batch: TrainBatch, terms: tuple[LossTermSpec, ...]):
        """train.epochs x train.minibatches optimizer steps (rlft/updates.py), their
        figures averaged."""
        return self._updates(self.pools.learners, batch, terms)

    def _updates(self, ranks: list, batch: TrainBatch, terms: tuple[LossTermSpec, ...]):
        return mean_stats([self._update_once(ranks, mb, terms)
                           for mb in minibatches(batch, self.plan, self.step)])

    def _update_once(self, ranks: list, batch: TrainBatch, terms: tuple[LossTermSpec, ...]):
        """One optimizer step of the learner (or critic) world, each rank on its rows."""
        world = len(ranks)
        stats = ray.get([lrn.update.remote(_rows(batch, r, world), terms)
                         for r, lrn in enumerate(ranks)])
        return stats[0]  # every rank reports the same reduced figures

    def values(self, batch: TrainBatch) -> torch.Tensor:
        """The critic's values [B, L] of the batch, assembled from its ranks' shards."""
        world = len(self.pools.critics)
        parts = ray.get([c.values.remote(_rows(batch, r, world))
                         for r, c in enumerate(self.pools.critics)])
        out = torch.zeros_like(batch.advantages)
        for r, part in enumerate(parts):
            out[r::world] = part
        return out

    def update_critic(self, batch: TrainBatch):
        """The critic fits the batch's `returns` (after the policy update) over the same
        epochs x minibatches as the policy, as PPO does: its clipped value loss keeps
        each value near the rollout-time one however many passes it takes."""
        return self._updates(self.pools.critics, batch, self.algo.critic_terms)

    def sync_weights(self, rejoin: bool = False) -> None:
        """The learner's weights, as version self.version, into every rollout worker
        (rlft/sync.py); `rejoin`: rebuild the broadcast group first."""
        self.weights.push(self.version, rejoin)

    def evaluate(self) -> dict[str, float]:
        """Held-out pass@k and reward on the running rollout workers (rlft/evaluate.py)."""
        out = evaluate(self.eval_prompts, lambda b, p: self.generate(b, self.step, p),
                       self.score, spec_from(self.cfg))
        log.info("eval after step %d: %s", self.step,
                 ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
        return out

    # -- helpers ------------------------------------------------------------
    def _rollout_all(self, verb: str) -> None:
        """Call the no-argument verb `verb` (sleep, wake) on every rollout worker."""
        ray.get([getattr(w, verb).remote() for w in self.pools.rollout])

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
            critic = str(Path(path).with_name("critic"))  # beside the learner's folder
            ray.get([c.save.remote(critic) for c in self.pools.critics])

        return checkpoint.save(self.run.ckpt_root, state, save_learner, self.cfg.checkpoint.keep)

    def _restore(self, ckpt: Path) -> None:
        state = checkpoint.load_state(ckpt)
        ray.get([lrn.load.remote(str(ckpt / "learner")) for lrn in self.pools.learners])
        ray.get([c.load.remote(str(ckpt / "critic")) for c in self.pools.critics])
        self.sampler.load_state_dict(state.sampler)
        self.step, self.version = state.step, state.policy_version
        self.sync_weights()
        log.info("resumed from %s at step %d (policy version %d)", ckpt, self.step, self.version)

    def _metrics(self, step: int, scored: ScoredRollouts, stats, seconds,
                 extra: dict[str, float] | None = None) -> StepMetrics:
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
            extra={"lr": stats.lr, "updates_per_step": stats.metrics.get("updates", 1.0),
                   **self.algo.step_metrics(step), **(extra or {})},
        )

    def close(self) -> None:
        self.pools.kill()


def _split(batch: PromptBatch, k: int) -> list[PromptBatch]:
    """Contiguous request shards, one per rollout worker. A group spread over several
    requests (Prefix-RFT) may straddle two shards: advantages run after the join."""
    size = -(-len(batch.prompts) // k)
    return [PromptBatch(prompts=batch.prompts[i:i + size], prefix_ids=batch.prefix_ids[i:i + size],
                        group_id=batch.group_id[i:i + size], n=batch.n)
            for i in range(0, k * size, size)]


def _rows(batch: TrainBatch, rank: int, world: int) -> TrainBatch:
    """Rank `rank`'s data-parallel shard: rows rank, rank+world, ..."""
    return batch if world == 1 else batch.select(slice(rank, None, world))
