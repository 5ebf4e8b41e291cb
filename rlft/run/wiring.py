"""Wiring: the only code that turns the run config into plain arguments for
workers and math, and starts the run's actors (prompts, rollout workers, the
reward actor, learner and critic ranks, the weight sync)."""

from __future__ import annotations

import importlib.util
import logging

import ray

from rlft.algos.contract import Algorithm
from rlft.config import Config, ConfigError
from rlft.data.prompts import build_prompts
from rlft.data.sampler import PromptSampler
from rlft.data.sources import load_rows
from rlft.models import load_tokenizer, resolve_model
from rlft.registry import RegistryError
from rlft.rewards.base import RewardTerm, load_term
from rlft.run import console
from rlft.run.resources import Demand, check_fits, cluster_nodes, custom
from rlft.run.turn_settings import env_settings, tool_settings, with_env_tools
from rlft.run.weight_push import WeightPush
from rlft.workers.critic import Critic, CriticParams
from rlft.workers.learner import Learner, LearnerParams, LoraParams
from rlft.workers.placement import (
    PlacementTimeout,
    Pools,
    actor,
    allocator_env,
    gpu_bundles,
    gpus_per_actor,
    init_ray,
    join_world,
    node_ips,
)
from rlft.workers.reward import RewardService
from rlft.workers.rollout import RolloutWorker, SamplingParams
from rlft.workers.self_reward import SelfRewardScorer

log = logging.getLogger("rlft")


def engine_name(cfg: Config) -> str:
    """`auto` means vLLM where it imports, else transformers."""
    if cfg.rollout.engine != "auto":
        return cfg.rollout.engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def gpus_per_engine(cfg: Config, engine: str) -> int:
    """GPUs (and sync-group ranks) one rollout engine spans: vLLM's tensor-parallel
    workers; the transformers engine is one process on one device."""
    return cfg.rollout.tensor_parallel_size if engine == "vllm" else 1


# Rollout settings only the vLLM engine takes, with their defaults.
VLLM_ONLY = {"tensor_parallel_size": 1, "kv_cache_gb": None, "gpu_memory_utilization": None,
             "vllm_in_process": None, "enforce_eager": None}
# The share of a GPU's memory vLLM takes by default: most of a dedicated rollout GPU,
# half of one it shares with a learner rank (its parameters, gradients, optimizer state).
GPU_MEMORY_SHARE = {"split": 0.9, "colocated": 0.5}


def _on_gpu(gpu: bool | None) -> bool:
    """`gpu`: whether the run's actors hold GPUs (None: whether this process sees one)."""
    if gpu is None:
        import torch

        return torch.cuda.is_available()
    return gpu


def model_dtype(cfg: Config, gpu: bool | None = None) -> str:
    """`model.dtype`, with `auto` = bfloat16 on GPUs, float32 on CPU (`gpu`: see `_on_gpu`)."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if _on_gpu(gpu) else "float32"


def micro_batch_tokens(cfg: Config, gpu: bool | None = None) -> int:
    """`train.micro_batch_tokens`, where None is 8192 on GPUs and 768 on CPU: a CPU
    learner's activations (about 1 MiB a token for SmolLM2-135M) set its peak
    memory: 768 keeps all of the default run's processes under 8 GiB, in the same
    wall time as the earlier 1024 under glibc (1024 under tcmalloc: ~10 % faster
    updates, 0.35 GiB more)."""
    if cfg.train.micro_batch_tokens is not None:
        return cfg.train.micro_batch_tokens
    return 8192 if _on_gpu(gpu) else 768


def rollout_dtype(cfg: Config, gpu: bool) -> str:
    """The engines' dtype: rollout.dtype, where `auto` is the learner's."""
    return model_dtype(cfg, gpu) if cfg.rollout.dtype == "auto" else cfg.rollout.dtype


def engine_kwargs(cfg: Config, engine: str, gpu: bool = False, engines_per_gpu: int = 1,
                  longest_prompt: int | None = None) -> dict:
    """The rollout engine's arguments beyond model and seed. `rollout.dtype=auto`
    is the learner's dtype (model.dtype). `engines_per_gpu` engines share one GPU
    (colocated mode): each asks for its share of gpu_memory_utilization.
    `longest_prompt`: the longest prompt the run will send, in tokens (else
    data.max_prompt_tokens): the CPU KV cache is sized by it."""
    r = cfg.rollout
    dtype = rollout_dtype(cfg, gpu)
    if engine == "vllm":
        if r.vllm_in_process and r.tensor_parallel_size > 1:
            raise ConfigError(f"rollout.vllm_in_process=true runs one vLLM worker in the rollout "
                              f"actor; rollout.tensor_parallel_size={r.tensor_parallel_size} "
                              "needs vLLM's worker processes: unset rollout.vllm_in_process")
        together = -(-r.prompts_per_step * r.n // r.num_workers)  # one worker's share
        prompt = min(longest_prompt or cfg.data.max_prompt_tokens, cfg.data.max_prompt_tokens)
        seq = prompt + (r.max_total_tokens if r.tools or r.env else r.max_new_tokens)
        share = r.gpu_memory_utilization or GPU_MEMORY_SHARE[r.mode]
        return dict(dtype=dtype, tensor_parallel_size=r.tensor_parallel_size,
                    kv_cache_gb=r.kv_cache_gb, kv_cache_shape=(together, seq),
                    gpu_memory_utilization=share / engines_per_gpu,
                    # CUDA graphs on GPUs (vLLM's weight reload keeps the captured
                    # tensors); the CPU path runs eager.
                    enforce_eager=not gpu if r.enforce_eager is None else r.enforce_eager,
                    sleep_mode=r.mode == "colocated",
                    # CPU: engine core and worker inside the rollout actor (two
                    # processes fewer, every core for generation; vllm_engine.py).
                    in_process=(not gpu and r.tensor_parallel_size == 1
                                if r.vllm_in_process is None else r.vllm_in_process))
    changed = [f"rollout.{k}={getattr(r, k)}" for k, v in VLLM_ONLY.items() if getattr(r, k) != v]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: vLLM-only settings, but the rollout engine is "
                          f"{engine!r} (rollout.engine={r.engine}); drop them, or install vLLM "
                          "and set rollout.engine=vllm")
    import torch

    # The transformers engine runs where its actor's GPU is, if it holds one.
    return dict(dtype=getattr(torch, dtype), device="cuda" if gpu else "cpu")


def weight_transport(cfg: Config, gpus: float, vllm_installed: bool | None = None) -> str | None:
    """The sync group backend of the broadcast weight transport ("nccl" when the
    learner uses CUDA, "gloo" on CPU), or None for the Ray object store.
    `vllm_installed`: None = look; the NCCL group is vLLM's PyNccl."""
    r = cfg.rollout
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    if r.weight_transport == "ray":
        return None
    if not gpus:  # auto too (benchmarks/bench_transport.py: a SmolLM2 sync into vLLM
        return "gloo"  # took 1.0 s, vs 5.0 s through the object store)
    if r.weight_transport == "auto":  # colocated GPU runs keep ray: NCCL cannot link
        return "nccl" if r.mode == "split" and vllm_installed else None  # ranks on one GPU
    if r.mode == "colocated":
        raise ConfigError("rollout.weight_transport=broadcast with rollout.mode=colocated on "
                          "GPUs: NCCL cannot link a learner rank and the rollout worker that "
                          "shares its GPU; set rollout.weight_transport=ray (or auto), or "
                          "rollout.mode=split")
    if not vllm_installed:
        raise ConfigError("rollout.weight_transport=broadcast on GPUs sends over vLLM's "
                          "PyNccl, but vLLM is not installed; install vllm, or set "
                          "rollout.weight_transport=ray")
    return "nccl"


def build_weight_sync(cfg: Config, pools: Pools) -> WeightPush:
    """The run's weight sync, its broadcast group (if any) already joined."""
    gpus = gpus_per_actor()
    backend = weight_transport(cfg, gpus)
    per_engine = gpus_per_engine(cfg, engine_name(cfg))
    sync = WeightPush(pools.learners, pools.rollout, backend, per_engine,
                      rollout_dtype(cfg, bool(gpus)), cfg.rollout.sync_timeout_s,
                      cfg.rollout.verify_sync)
    sync.connect()
    return sync


def sampling_params(cfg: Config, seed: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(temperature=r.temperature, top_p=r.top_p,
                          max_new_tokens=r.max_new_tokens, stop=tuple(r.stop), seed=seed)


def optimizer_steps(cfg: Config, training_steps: int) -> int:
    """Optimizer steps in `training_steps` training steps: the learners' schedulers
    advance once per optimizer step, and train.steps / train.warmup_steps count
    training steps, each train.epochs x train.minibatches updates."""
    return training_steps * cfg.train.epochs * cfg.train.minibatches


def learner_params(cfg: Config, gpu: bool | None = None) -> LearnerParams:
    t, lo = cfg.train, cfg.model.lora
    return LearnerParams(
        lr=t.lr, weight_decay=t.weight_decay, warmup_steps=optimizer_steps(cfg, t.warmup_steps),
        total_steps=optimizer_steps(cfg, t.steps), lr_schedule=t.lr_schedule,
        max_grad_norm=t.max_grad_norm, micro_batch_tokens=micro_batch_tokens(cfg, gpu),
        grad_checkpointing=cfg.model.grad_checkpointing,
        packing=t.packing, compile=t.compile, temperature=cfg.rollout.temperature or 1.0,
        seed=t.seed, max_nonfinite_steps=t.max_nonfinite_steps, param_dtype=model_dtype(cfg, gpu),
        lora=LoraParams(r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                        target_modules=tuple(lo.target_modules)),
    )


def build_prompts_for(cfg: Config, split: str | None = None) -> tuple[PromptSampler, int]:
    """Load and render the prompts; every data error surfaces here, before actors start."""
    d = cfg.data
    tokenizer = load_tokenizer(cfg.model.name)
    split = split or d.train_split
    rows = with_env_tools(cfg, load_rows(d.source, split))
    prompt_set = build_prompts(rows, tokenizer, prompt_field=d.prompt_field,
                               field_map=d.field_map, system_prompt=d.system_prompt,
                               max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row,
                               source_name=f"{d.source} [{split}]")
    if prompt_set.skipped:
        log.warning("skipped %d malformed rows of %s", prompt_set.skipped, d.source)
    _check_context(cfg, max(len(p.prompt_ids) for p in prompt_set.prompts))
    sampler = PromptSampler(prompt_set.prompts, cfg.rollout.prompts_per_step, seed=cfg.train.seed,
                            shuffle=d.shuffle)
    return sampler, tokenizer.pad_token_id


def build_pools(cfg: Config, algo: Algorithm, longest_prompt: int | None = None) -> Pools:
    """Start the rollout workers, the reward actor (`algo.reward_source`), the learner
    ranks and, when the spec needs one, the critic ranks, after checking that the
    cluster can hold them all. `longest_prompt`: see `engine_kwargs`.

    Actors get model *names*: each resolves (builds, for an alias) the model on
    its own node, as a cluster without a shared home folder needs; the driver
    resolves first, to fail early and to build its own node's copy."""
    terms = reward_terms(cfg) if algo.reward_source == "service" else []
    try:  # the malloc of CPU actors that hold a model (workers/placement.py)
        malloc = allocator_env(cfg.ray.cpu_allocator)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    init_ray(cfg.ray.address, cfg.ray.num_cpus, setup_hook=console.WORKER_SETUP)
    console.ray_started()  # worker output to the run folder's logs (rlft/run/console.py)
    model = algo.policy_model or cfg.model.name
    resolve_model(model)
    ref = cfg.model.ref_name or model
    resolve_model(ref)
    gpus = gpus_per_actor()
    env = {} if gpus else malloc
    engine = engine_name(cfg)
    world, n_roll = cfg.train.learner_workers, cfg.rollout.num_workers
    # The console's sign that start-up has reached the actors (the loading takes
    # longest); tests/faults kill runs here.
    log.info("%s (%s); starting %d rollout worker(s) (%s engine) and %d learner rank(s)%s, "
             "loading %s", console.RAY_UP, ray.get_runtime_context().gcs_address, n_roll,
             engine, world, " with critics" if algo.critic_terms else "", model)
    # Colocated on GPUs: learner rank i, its rollout workers (j % world == i), its
    # critic rank and (bundle 0) the self-reward actor share bundle i's GPU.
    shared = bool(gpus) and cfg.rollout.mode == "colocated"
    per_bundle = -(-n_roll // world)
    roll_kwargs = engine_kwargs(cfg, engine, bool(gpus), per_bundle if shared else 1,
                                longest_prompt)
    if cfg.rollout.tools:  # multi-turn rollouts (workers/turns.py)
        roll_kwargs["tools"] = tool_settings(cfg)
    if cfg.rollout.env:  # episodes in an environment (workers/episodes.py)
        roll_kwargs["environment"] = env_settings(cfg)
    weight_transport(cfg, gpus)  # fails on a broadcast transport that cannot work
    lres = custom(cfg.ray.learner_resources, "ray.learner_resources")
    rres = custom(cfg.ray.rollout_resources, "ray.rollout_resources")
    if cfg.ray.check_resources:
        check_fits(demands(cfg, algo, gpus, engine, lres, rres), cluster_nodes())
    try:
        bundles = gpu_bundles(world, lres, cfg.ray.placement_timeout_s) if shared else None
    except PlacementTimeout as exc:
        raise ConfigError(str(exc)) from None
    slots = 1 + per_bundle + bool(algo.critic_terms) + (algo.reward_source == "self_reward")
    share = 1 / slots if shared else 1.0

    def place(i: int, res: dict[str, float]) -> dict:
        return {"bundle": (bundles, i % world)} if bundles is not None else {"resources": res}
    # Rollout and reward actors are restarted when they die (the loop re-sends
    # weights to a restarted rollout worker); learners never are: a fresh learner
    # would silently train from the initial weights.
    restarts = dict(max_restarts=cfg.ray.max_restarts, max_task_retries=cfg.ray.max_task_retries)
    roll_gpus = gpus * share if shared else gpus * cfg.rollout.tensor_parallel_size

    def start_rollout() -> list:
        return [actor(RolloutWorker, engine=engine, model_path=model, seed=cfg.train.seed + i,
                      num_gpus=roll_gpus, env=env, **place(i, rres), **roll_kwargs, **restarts)
                for i in range(n_roll)]
    # Colocated: the learners load first, so that each vLLM engine sizes its cache
    # from what they leave (it counts memory others take meanwhile as its own).
    rollout = [] if shared else start_rollout()
    learners = [actor(Learner, model, learner_params(cfg, bool(gpus)), rank=r, world_size=world,
                      ref_model=ref if "ref_logprobs" in algo.needs else None, defer_join=True,
                      num_gpus=gpus * share, env=env, **place(r, lres))
                for r in range(world)]
    address = join_world(learners)
    critics = []
    if algo.critic_terms:  # its own process group: one rank per learner rank
        critics = [actor(Critic, model, critic_params(cfg, bool(gpus)), rank=r,
                         world_size=world, defer_join=True, num_gpus=gpus * share, env=env,
                         **place(r, lres))
                   for r in range(world)]
        join_world(critics)
    if shared:  # what loading left in the allocator's cache is not theirs to keep
        ray.get([h.release_memory.remote() for h in [*learners, *critics]])
    rollout = rollout or start_rollout()
    opts = dict(num_gpus=gpus * share, **restarts, **({"bundle": (bundles, 0)} if shared else {}))
    reward = REWARD_ACTORS[algo.reward_source](cfg, algo, terms, opts)
    log.info("learner world at %s; learner ranks on %s; rollout workers on %s", address,
             ", ".join(node_ips(learners)), ", ".join(node_ips(rollout)))
    return Pools(rollout=rollout, reward=reward, learners=learners, critics=critics,
                 placement=bundles)


def demands(cfg: Config, algo: Algorithm, gpus: float, engine: str,
            lres: dict[str, float], rres: dict[str, float]) -> list[Demand]:
    """What the run's actors ask of the cluster (rlft/run/resources.py)."""
    world, n_roll = cfg.train.learner_workers, cfg.rollout.num_workers
    critic = bool(algo.critic_terms)
    if not gpus:  # CPU: one core per concurrently busy actor, phase by phase
        out = [Demand("rollout workers", n_roll, rres, "rollout.num_workers", "rollout", 1.0),
               Demand("learner ranks", world, lres, "train.learner_workers", "update", 1.0)]
        if critic:
            out.append(Demand("critic ranks", world, lres, "train.learner_workers", "update", 1.0))
        return out
    if cfg.rollout.mode == "colocated":  # everything shares the learners' bundles
        return [Demand("learner ranks (each sharing its GPU with rollout workers)", world,
                       {"GPU": 1.0, **lres}, "train.learner_workers")]
    tp = gpus_per_engine(cfg, engine)
    out = [Demand("learner ranks", world, {"GPU": 1.0, **lres}, "train.learner_workers"),
           Demand("rollout workers", n_roll, {"GPU": float(tp), **rres},
                  "rollout.num_workers (x rollout.tensor_parallel_size)")]
    if critic:
        out.append(Demand("critic ranks", world, {"GPU": 1.0, **lres}, "train.learner_workers"))
    if algo.reward_source == "self_reward":
        out.append(Demand("self-reward scorers", 1, {"GPU": 1.0}, "algo.name"))
    return out


def _service(cfg: Config, algo: Algorithm, terms: list[RewardTerm], opts: dict) -> object:
    opts = {k: v for k, v in opts.items() if k != "bundle"}
    opts["num_gpus"] = 0  # reward functions run on CPU processes
    return actor(RewardService, terms, num_workers=cfg.reward.num_workers,
                 timeout_s=cfg.reward.timeout_s, fallback=cfg.reward.fallback,
                 max_failure_frac=cfg.reward.max_failure_frac, **opts)


def _self_reward(cfg: Config, algo: Algorithm, terms: list[RewardTerm], opts: dict) -> object:
    a = algo.reward_args
    resolve_model(a["sft_model"]), resolve_model(a["base_model"])  # fail here, not in the actor
    return actor(SelfRewardScorer, a["sft_model"], a["base_model"], norm=a["norm"], eps=a["eps"],
                 micro_batch_tokens=micro_batch_tokens(cfg, bool(opts.get("num_gpus"))),
                 dtype=model_dtype(cfg, bool(opts.get("num_gpus"))), **opts)


# Algorithm.reward_source -> the actor that scores rollouts (its verb: score).
REWARD_ACTORS = {"service": _service, "self_reward": _self_reward}


def critic_params(cfg: Config, gpu: bool | None = None) -> CriticParams:
    t = cfg.train
    return CriticParams(lr=cfg.algo.ppo.critic_lr, weight_decay=t.weight_decay,
                        warmup_steps=optimizer_steps(cfg, t.warmup_steps),
                        total_steps=optimizer_steps(cfg, t.steps),  # as many as the policy
                        lr_schedule=t.lr_schedule, max_grad_norm=t.max_grad_norm,
                        micro_batch_tokens=micro_batch_tokens(cfg, gpu),
                        param_dtype=model_dtype(cfg, gpu),
                        seed=t.seed, grad_checkpointing=cfg.model.grad_checkpointing,
                        max_nonfinite_steps=t.max_nonfinite_steps)


def reward_terms(cfg: Config) -> list[RewardTerm]:
    """The reward terms, each resolved once here so that a missing file, a missing
    function or a bad kwarg fails before Ray and the models start (the reward
    actor resolves them again in its own process)."""
    terms = []
    for i, t in enumerate(cfg.reward.terms):
        kwargs = dict(t.kwargs)
        if t.name == "state_match" and cfg.rollout.env:  # it replays on the run's environment
            kwargs.setdefault("env", cfg.rollout.env)
        try:
            term = RewardTerm(t.name, t.weight, kwargs)
            load_term(term)
        except (RegistryError, TypeError, ValueError) as exc:
            raise ConfigError(f"reward.terms[{i}] ({t.name!r}): {exc}") from exc
        terms.append(term)
    return terms


def _check_context(cfg: Config, longest_prompt: int) -> None:
    """The longest prompt plus rollout.max_new_tokens must fit the model's context;
    checked from the model's config.json, before any weights are loaded."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(resolve_model(cfg.model.name)),
                    "max_position_embeddings", None)
    cap = "max_total_tokens" if cfg.rollout.tools or cfg.rollout.env else "max_new_tokens"
    need = longest_prompt + getattr(cfg.rollout, cap)
    if limit is not None and need > limit:
        raise ConfigError(
            f"the longest prompt of {cfg.data.source} has {longest_prompt} tokens; with "
            f"rollout.{cap}={getattr(cfg.rollout, cap)} that is {need} tokens, over "
            f"the context of {cfg.model.name} ({limit}); lower rollout.max_new_tokens or "
            f"data.max_prompt_tokens (longer prompts become bad rows)")
