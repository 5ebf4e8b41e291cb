"""The training loop: one driver process running the calls of a training step.

prompts -> rollout -> rewards -> advantages -> update (each trainable role)
-> weight sync. Nothing here branches on the algorithm: every optional
behaviour is a hook of its `Algorithm` (rlft/algos/contract.py) with a
do-nothing default, called on every step, and the batch fields it needs are
one declared set (`Algorithm.needs`) filled by `fill`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
import torch

from rlft.algos.catalogue import build_algorithm
from rlft.algos.contract import Algorithm, LossTermSpec
from rlft.batch.collate import collate, with_advantages
from rlft.batch.groups import first_groups, merge_rounds, num_groups, take
from rlft.batch.minibatch import UpdatePlan, mean_stats, minibatches
from rlft.commands.evaluate import evaluate, spec_from
from rlft.config import Config
from rlft.learner.driver import HEADLINE, UpdateStats
from rlft.rewards.fields import field_warnings
from rlft.run import checkpoint, restarts, wiring
from rlft.run.dispatch import gather_rows, on_ranks
from rlft.run.folder import RunFolder
from rlft.run.ledger import Ledger
from rlft.run.nothing_to_learn import flat_group_metrics
from rlft.run.pipeline import (
    Collected,
    LostWeights,
    RolloutAhead,
    StepFlow,
    flow_metrics,
    staleness,
)
from rlft.run.stages import run_stages
from rlft.run.tracking import make_sinks
from rlft.run.weight_push import SyncTimeout
from rlft.run.wiring import build_pools, build_prompts_for, build_weight_sync, sampling_params
from rlft.types import Prompt, PromptBatch, Rollouts, ScoredRollouts, StepMetrics, TrainBatch
from rlft.workers.episodes import turn_metrics
from rlft.workers.rollout import SamplingParams

log = logging.getLogger("rlft")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`: `with t.stage("reward"): ...`."""
        start = time.perf_counter()
        try:
            yield
        finally:  # summed: a stage may run several times in one step (dynamic sampling)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Role:
    """A trainable role: its ranks (Ray actors with `update(batch, terms)`), its
    loss terms per step, and the stage name its time is logged under. The
    policy is the first role; a critic, when the algorithm has one, the next."""

    name: str
    stage: str
    ranks: list
    terms: Callable[[int], tuple[LossTermSpec, ...]]


class TrainingLoop:
    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        algo = build_algorithm(cfg)  # fails on bad algo settings before loading
        self.run = RunFolder.create(cfg, resume)
        self.algo: Algorithm = run_stages(cfg, algo, self.run.path)  # e.g. SFT first
        self.sampler, self.pad_id = build_prompts_for(cfg)
        self.eval_prompts = build_prompts_for(cfg, cfg.data.eval_split)[0].prompts[
            :cfg.train.eval_prompts or None] if cfg.train.eval_every else ()
        terms = wiring.reward_terms(cfg) if self.algo.reward_source == "service" else []
        for warning in field_warnings(terms, [p.fields for p in self.sampler.prompts],
                                      cfg.data.field_map):  # a reward input that no row has
            log.warning(warning)
        sent = [*self.sampler.prompts, *self.eval_prompts]  # the CPU KV cache is sized by them
        self.pools = build_pools(cfg, self.algo, max(len(p.prompt_ids) for p in sent))
        self.weights = build_weight_sync(cfg, self.pools)  # rollout.weight_transport
        self.step, self.version = 0, 0
        self.plan = UpdatePlan(cfg.train.epochs, cfg.train.minibatches, cfg.train.seed)
        # Several updates per batch: PPO's ratio is taken against the weights at the
        # step's start (K=0: those that sampled; K>=1: the proximal policy, and the
        # TIS/MIS weight pi_old / pi_rollout reaches back to the sampler), not
        # against each update's starting point.
        self.needs = self.algo.needs | (
            {"old_logprobs"} if self.plan.updates > 1 else frozenset())
        critic_terms = self.algo.critic_terms
        self.roles = [role for role in (
            Role("policy", "update", self.pools.learners, self.algo.terms),
            Role("critic", "critic", self.pools.critics, lambda step: critic_terms),
        ) if role.ranks]
        self.colocated = cfg.rollout.mode == "colocated"  # rollout sleeps in the learner phase
        # train.max_staleness=K: K batches sampled ahead by a producer thread (K=0: inline).
        self.ahead = RolloutAhead(self.collect, self.sampler, cfg.train.max_staleness,
                                  cfg.train.stale_policy, cfg.train.steps)
        if self.run.resume_from is not None:
            self._restore(self.run.resume_from)
        self.ledger = Ledger(self.run.path, self.step)  # trained.jsonl: draws trained per step
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
        t, start, step = StageTimer(), time.perf_counter(), self.step
        item, flow = self.ahead.take(step, self.version, lambda: self.sync_weights(rejoin=True))
        t.seconds.update(item.seconds)  # with K >= 1: sampled during the previous step
        with self.learner_phase(t):
            with t.stage("advantage"):
                batch, shaped = self.advantages(item.kept, item.prompts, step)
            stats = {}
            for role in self.roles:
                with t.stage(role.stage):
                    stats[role.name] = self.update(role, batch)
        self.version += 1
        flow.wait_s += self.ahead.settle()  # weights change between rollout batches only
        with t.stage("sync"):
            self.sync_weights(self.ahead.lost_weights())  # a restarted worker rejoins
        self.step += 1
        self.ledger.record(step, self.version - 1, item, self.sampler.prompt_at,
                           flow.dropped_draws)
        others = {k: v for name, s in stats.items() if name != "policy"
                  for k, v in s.flat(name).items()}  # critic/... figures
        flows = self._flow_metrics(item, flow, t.seconds, time.perf_counter() - start)
        return self._metrics(step, item.scored, stats["policy"], t.seconds,
                             {**item.extra, **shaped, **others, **flows})

    def collect(self, step: int, version: int, source: Iterator[list[Prompt]]) -> Collected:
        """prompts -> rollout -> reward, then the spec's `keep_groups` filter (DAPO
        dynamic sampling drops groups whose rewards are all equal); up to
        `filter_rounds` prompt batches are drawn from `source` to refill the first
        round's number of groups. Runs in the rollout-ahead thread when
        train.max_staleness >= 1 (rlft/run/pipeline.py), with the weights of
        `version`. Returns the first PromptBatch, every scored sample (for the
        metrics), the samples to train on and filter metrics, as a `Collected`."""
        algo, batches, rounds, kept, drawn, t = self.algo, [], [], [], [], StageTimer()
        for r in range(algo.filter_rounds):
            prompts = next(source, None)
            if prompts is None:  # sampling a batch again: its own rounds only
                break
            drawn.append(tuple(prompts))
            with t.stage("prompts"):
                batch = algo.make_batch(prompts, step, self.cfg.rollout.n)
            batches.append(batch)
            seed = self.cfg.train.seed * 1_000_003 + step + r * 1_000_000_007
            with t.stage("rollout"):
                rollouts = self.generate(batch, step, sampling_params(self.cfg, seed=seed),
                                         version)
            with t.stage("reward"):
                rounds.append(self.score(rollouts))
            kept.append(take(rounds[-1], algo.keep_groups(rounds[-1])))
            if sum(num_groups(k) for k in kept) >= num_groups(rounds[0]):
                break
        train = first_groups(merge_rounds(kept), num_groups(rounds[0]))
        extra = {"filter/kept_groups": float(num_groups(train)), "filter/rounds": len(rounds)}
        if len(train.rollouts) == 0:
            # Every group was uniform: all advantages are zero, so the first round
            # is as good as none (only KL / entropy terms act) and keeps the step whole.
            train = rounds[0]
        return Collected(step, version, batches[0], merge_rounds(rounds), train, extra,
                         dict(t.seconds), tuple(drawn))

    @contextlib.contextmanager
    def learner_phase(self, t: StageTimer) -> Iterator[None]:
        """Colocated mode: the rollout engines sleep while the learners work (they
        get the engines' accelerator memory) and wake before the sync, also after
        a failed update, for whoever goes on."""
        if self.colocated:
            with t.stage("sleep"):
                self._rollout_all("sleep")
        try:
            yield
        finally:
            if self.colocated:
                with t.stage("wake"):
                    self._hand_gpus_to_rollout()

    # -- the calls of a step ------------------------------------------------------
    def generate(self, batch: PromptBatch, step: int, params: SamplingParams | None = None,
                 version: int | None = None) -> Rollouts:
        """Rollouts of `batch` from every worker; they must hold policy `version`
        (default: the current one). In the rollout-ahead thread (`version` given,
        train.max_staleness >= 1) a mismatch raises `LostWeights`: only the driver
        thread re-sends weights, between rollout batches."""
        params = params or sampling_params(self.cfg, seed=self.cfg.train.seed * 1_000_003 + step)
        ahead, version = version is not None and self.ahead.depth > 0, \
            self.version if version is None else version
        shards = batch.shards(len(self.pools.rollout))

        def run() -> list[Rollouts]:
            return ray.get([w.generate.remote(s, params)
                            for w, s in zip(self.pools.rollout, shards) if s.prompts])

        parts = restarts.through_restarts(run, self.pools.rollout, self.cfg.ray.restart_timeout_s)
        if any(p.policy_version != version for p in parts):
            # A worker that Ray restarted (ray.max_restarts) holds its initial weights:
            # send the current ones and generate again (seeded: the same samples).
            lost = (f"rollouts came from policy versions "
                    f"{sorted({p.policy_version for p in parts})}, expected {version}: a "
                    f"rollout worker was restarted")
            if ahead:
                raise LostWeights(lost)
            log.warning("%s; re-sending the weights and generating again", lost)
            # Its broadcast group membership is gone too: the group is rebuilt first.
            self.sync_weights(rejoin=True)
            parts = restarts.through_restarts(run, self.pools.rollout, self.cfg.ray.restart_timeout_s)
        out = Rollouts.concat(parts)
        if out.policy_version != version:
            raise RuntimeError(f"rollouts came from policy version {out.policy_version}, "
                               f"expected {version}: a weight sync was lost")
        return out

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        return ray.get(self.pools.reward.score.remote(rollouts))

    def advantages(self, scored: ScoredRollouts, prompts: PromptBatch, step: int
                   ) -> tuple[TrainBatch, dict[str, float]]:
        """Scored rollouts -> the training batch: the spec's extra rows, collate,
        the declared fields, reward shaping, the estimator, the token filter.
        Returns the batch and the shaping's metrics."""
        algo = self.algo
        scored = algo.add_rows(scored, prompts, step)
        batch, token_rewards = collate(scored, self.pad_id)
        batch, entropy = self.fill(batch, self.needs)
        token_rewards, shaped = algo.shape_rewards(batch, token_rewards)
        batch = with_advantages(batch, token_rewards, algo.advantage, algo.adv_params)
        return algo.token_filter(batch, entropy), dict(shaped)

    def fill(self, batch: TrainBatch, needs: frozenset[str]
             ) -> tuple[TrainBatch, torch.Tensor | None]:
        """The batch fields in `needs` (BATCH_FIELDS), one no-grad pass each:
        reference log-probs, the sampling policy's log-probs and entropy (one
        pass gives both), the critic's values. Returns the batch and the entropy
        [B, L] (None unless needed)."""
        ref = self._logprobs(batch, ref=True)[0] if "ref_logprobs" in needs else None
        old, entropy = self._logprobs(batch, ref=False) \
            if needs & {"old_logprobs", "entropy"} else (None, None)
        values = self.values(batch) if "old_values" in needs else None
        return batch.with_(ref_logprobs=ref, old_values=values,
                           old_logprobs=old if "old_logprobs" in needs else None), entropy

    def update(self, role: Role, batch: TrainBatch) -> UpdateStats:
        """The role's train.epochs x train.minibatches optimizer steps
        (rlft/batch/minibatch.py), their figures averaged. The critic fits the
        batch's `returns` after the policy update, over the same minibatches, as
        PPO does: its clipped value loss keeps each value near the rollout-time
        one however many passes it takes."""
        terms = role.terms(self.step)
        return mean_stats([self._update_once(role.ranks, mb, terms)
                           for mb in minibatches(batch, self.plan, self.step)])

    def _update_once(self, ranks: list, batch: TrainBatch, terms: tuple[LossTermSpec, ...]
                     ) -> UpdateStats:
        """One optimizer step of a role's world, each rank on its rows."""
        return on_ranks(ranks, "update", batch, terms)[0]  # every rank reports the same figures

    def values(self, batch: TrainBatch) -> torch.Tensor:
        """The critic's values [B, L] of the batch, assembled from its ranks' shards."""
        return gather_rows(on_ranks(self.pools.critics, "values", batch), batch.advantages)

    def sync_weights(self, rejoin: bool = False) -> None:
        """The learner's weights, as version self.version, into every rollout worker
        (rlft/run/weight_push.py); `rejoin`: rebuild the broadcast group first.
        A worker lost mid-sync (its node died) or hung past rollout.sync_timeout_s
        (then killed) breaks the broadcast for everyone: once Ray has restarted
        it, the sync runs again over a new group."""
        try:
            self.weights.push(self.version, rejoin)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, SyncTimeout) as exc:
            if not restarts.rollout_lost(self.pools.rollout):
                raise  # every worker answers: a real error, not a lost worker
            log.warning("a rollout worker was lost during the weight sync (%s); waiting up to "
                        "%.0f s for Ray to restart it, then syncing again",
                        str(exc).splitlines()[0][:200], self.cfg.ray.restart_timeout_s)
            restarts.wait_for_rollout(self.pools.rollout,
                                      time.monotonic() + self.cfg.ray.restart_timeout_s)
            self.weights.push(self.version, rejoin=True)

    def evaluate(self) -> dict[str, float]:
        """Held-out pass@k and reward on the running rollout workers (rlft/commands/evaluate.py)."""
        out = evaluate(self.eval_prompts, lambda b, p: self.generate(b, self.step, p),
                       self.score, spec_from(self.cfg))
        log.info("eval after step %d: %s", self.step,
                 ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
        return out

    # -- helpers ------------------------------------------------------------
    def _rollout_all(self, verb: str) -> None:
        """Call the no-argument verb `verb` (sleep, wake) on every rollout worker."""
        ray.get([getattr(w, verb).remote() for w in self.pools.rollout])

    def _hand_gpus_to_rollout(self) -> None:
        """Colocated: learners and critics free their cached GPU blocks, then the
        engines wake into that memory."""
        ray.get([h.release_memory.remote() for h in [*self.pools.learners, *self.pools.critics]])
        self._rollout_all("wake")

    def _logprobs(self, batch: TrainBatch, ref: bool) -> tuple[torch.Tensor, torch.Tensor]:
        parts = on_ranks(self.pools.learners, "compute_logprobs", batch, ref)
        return (gather_rows([p[0] for p in parts], batch.advantages),
                gather_rows([p[1] for p in parts], batch.advantages))

    def save(self) -> Path:
        # The sampler as before the batches sampled ahead: a resume draws them again.
        state = checkpoint.TrainerState(step=self.step, policy_version=self.version,
                                        sampler=self.ahead.sampler_state(),
                                        inflight=self.ahead.inflight())

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
        if state.inflight:
            log.info("the %d batch(es) sampled ahead at the checkpoint (steps %s) are sampled "
                     "again from the same prompts", len(state.inflight),
                     ", ".join(str(b["step"]) for b in state.inflight))

    def _flow_metrics(self, item: Collected, flow: StepFlow, seconds: dict[str, float],
                      wall: float) -> dict[str, float]:
        learner = sum(seconds.get(k, 0.0) for k in ("advantage", *(r.stage for r in self.roles)))
        flow.rollout_busy_s += self.ahead.step_rollout_seconds()
        return flow_metrics(staleness(self.version - 1, item.version), flow, learner, wall)

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
                   "sync/verified": float(self.weights.verify),  # fingerprints checked
                   # each loss term's figures (<term>/clip_frac, ...) and mismatch/*
                   **{k: v for k, v in stats.metrics.items() if k not in HEADLINE},
                   **flat_group_metrics(scored),  # groups that scored alike
                   **turn_metrics(ro, comps),  # multi-turn: turns, calls, env/* (rollout.env)
                   **self.algo.step_metrics(step), **(extra or {})},
        )

    def close(self) -> None:
        self.ahead.close()
        self.pools.kill()

