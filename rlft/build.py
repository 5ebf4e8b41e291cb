"""Builders: the only code that turns the run config into plain arguments for
workers and math (DESIGN.md rule 5)."""

from __future__ import annotations

import importlib.util
import logging

from rlft.algos.spec import Algorithm
from rlft.config import Config
from rlft.data import PromptSampler, build_prompts, load_rows
from rlft.models import load_tokenizer, resolve_model
from rlft.rewards.base import RewardTerm
from rlft.workers.learner import Learner, LearnerParams
from rlft.workers.placement import Pools, actor, free_port, gpus_per_actor, init_ray
from rlft.workers.reward import RewardService
from rlft.workers.rollout import RolloutWorker, SamplingParams

log = logging.getLogger("rlft")


def engine_name(cfg: Config) -> str:
    """`auto` means vLLM where it imports, else transformers."""
    if cfg.rollout.engine != "auto":
        return cfg.rollout.engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def sampling_params(cfg: Config, seed: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(temperature=r.temperature, top_p=r.top_p,
                          max_new_tokens=r.max_new_tokens, stop=tuple(r.stop), seed=seed)


def learner_params(cfg: Config) -> LearnerParams:
    t = cfg.train
    return LearnerParams(
        lr=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        total_steps=t.steps, lr_schedule=t.lr_schedule, max_grad_norm=t.max_grad_norm,
        micro_batch_tokens=t.micro_batch_tokens, grad_checkpointing=cfg.model.grad_checkpointing,
        seed=t.seed, max_nonfinite_steps=t.max_nonfinite_steps, param_dtype=cfg.model.dtype,
    )


def build_prompts_for(cfg: Config, split: str | None = None) -> tuple[PromptSampler, int]:
    """Load and render the prompts; every data error surfaces here, before actors start."""
    d = cfg.data
    tokenizer = load_tokenizer(cfg.model.name)
    split = split or d.train_split
    rows = load_rows(d.source, split)
    prompt_set = build_prompts(rows, tokenizer, prompt_field=d.prompt_field,
                               field_map=d.field_map, system_prompt=d.system_prompt,
                               max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row,
                               source_name=f"{d.source} [{split}]")
    if prompt_set.skipped:
        log.warning("skipped %d malformed rows of %s", prompt_set.skipped, d.source)
    sampler = PromptSampler(prompt_set.prompts, cfg.rollout.prompts_per_step, seed=cfg.train.seed,
                            shuffle=d.shuffle)
    return sampler, tokenizer.pad_token_id


def build_pools(cfg: Config, algo: Algorithm) -> Pools:
    """Start the rollout workers, the reward service and the learner ranks."""
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    model_path = resolve_model(cfg.model.name)  # converts/caches once, before actors race for it
    ref_path = resolve_model(cfg.model.ref_name) if cfg.model.ref_name else model_path
    gpus = gpus_per_actor()
    engine = engine_name(cfg)
    rollout = [actor(RolloutWorker, engine=engine, model_path=model_path, seed=cfg.train.seed + i,
                     num_gpus=gpus)
               for i in range(cfg.rollout.num_workers)]
    terms = [RewardTerm(t.name, t.weight, dict(t.kwargs)) for t in cfg.reward.terms]
    reward = actor(RewardService, terms, num_workers=cfg.reward.num_workers,
                   timeout_s=cfg.reward.timeout_s, fallback=cfg.reward.fallback,
                   max_failure_frac=cfg.reward.max_failure_frac)
    world = cfg.train.learner_workers
    init = f"tcp://127.0.0.1:{free_port()}"
    learners = [actor(Learner, model_path, learner_params(cfg), rank=r, world_size=world,
                      init_method=init, ref_model=ref_path if algo.needs_ref else None,
                      num_gpus=gpus)
                for r in range(world)]
    return Pools(rollout=rollout, reward=reward, learners=learners)
