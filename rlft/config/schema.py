"""The run configuration's fields: every setting, its default, its help text
and its bounds, documented once (`rlft config` prints them)."""

from __future__ import annotations

from dataclasses import dataclass

from rlft.config.fields import ConfigError, doc, names_in

__all__ = ["ConfigError", "doc", "names_in"]  # with the section classes below


@dataclass
class LoraConfig:
    r: int = doc(0, "LoRA adapter rank; 0 = off (full fine-tuning). With r > 0 only the "
                 "adapters train (raise train.lr, e.g. 1e-5..1e-4).", lo=0)
    alpha: float = doc(16.0, "LoRA alpha: the adapter output is scaled by alpha / r.", lo=1e-9)
    dropout: float = doc(0.0, "Dropout on the adapter input while training.", lo=0.0, hi=0.99)
    target_modules: list = doc([], "Module names that get adapters, e.g. [q_proj, v_proj]; "
                               "empty = every linear layer of the decoder (not lm_head).")
    export: str = doc("merged", "What `rlft export` writes: merged (a plain HF model folder) or "
                      "adapter (a peft adapter folder for PeftModel.from_pretrained).",
                      choices=("merged", "adapter"))


@dataclass
class ModelConfig:
    name: str = doc("smollm2-135m-instruct", "Policy model: a built-in alias (smollm2-135m-instruct, "
                    "tiny-random), a local Hugging Face folder, or a hub id.")
    ref_name: str | None = doc(None, "Reference model for KL; default: the policy's initial weights.")
    dtype: str = doc("auto", "Compute dtype of the learner (master weights and optimizer state "
                     "stay fp32); auto = bfloat16 on a GPU cluster, float32 on CPU.",
                     choices=("auto", "float32", "bfloat16"))
    grad_checkpointing: bool = doc(False, "Recompute activations in backward to save memory.")
    lora: LoraConfig = doc(LoraConfig(), "LoRA adapters (peft); rollout engines get merged "
                           "weights.")


@dataclass
class DataConfig:
    source: str = doc("builtin:arithmetic", "Training data: builtin:<task> (arithmetic, bank, "
                      "json_extract, tool_call, tool_use), reasoning_gym:<task>[?size=N&"
                      "eval_size=M&seed=S], a "
                      ".jsonl/.json/.parquet file or folder, or a hub dataset name.")
    train_split: str = doc("train", "Split used for training.")
    eval_split: str = doc("eval", "Held-out split used by evaluation.")
    prompt_field: str = doc("prompt", "Column holding the prompt (a string or chat messages).")
    field_map: dict = doc({}, "Rename dataset columns to rlft's names, e.g. {question: prompt}.")
    system_prompt: str | None = doc(None, "Optional system message prepended to every prompt.")
    max_prompt_tokens: int = doc(256, "Prompts longer than this are bad rows.", lo=1)
    on_bad_row: str = doc("error", "What to do with a malformed row.", choices=("error", "skip"))
    shuffle: bool = doc(True, "Shuffle prompts each epoch (seeded by train.seed).")


@dataclass
class RolloutConfig:
    engine: str = doc("auto", "Rollout engine: vllm, hf (transformers), or auto (vllm when it "
                      "imports, else hf).", choices=("auto", "vllm", "hf"))
    num_workers: int = doc(1, "Rollout worker actors; prompts are split between them.", lo=1)
    prompts_per_step: int = doc(8, "Prompts sampled per training step.", lo=1)
    n: int = doc(8, "Samples per prompt (the group size G).", lo=1)
    temperature: float = doc(1.0, "Sampling temperature (0 = greedy).", lo=0.0)
    top_p: float = doc(1.0, "Nucleus sampling mass.", lo=0.0, hi=1.0)
    max_new_tokens: int = doc(24, "Response length cap in tokens.", lo=1)
    stop: list = doc([], "Extra stop strings (EOS always stops).")
    tools: list = doc([], "Tools the model may call, for multi-turn rollouts: built-in names "
                      "(calculator, lookup) or import paths (tools.py:fn). Empty: single-turn. "
                      "A turn calling <tool_call>{...}</tool_call> gets the results as tool "
                      "messages and generation goes on (workers/turns.py).")
    env: str = doc("", "Stateful environment (rlft/envs): bank, or env.py:Class; a fresh "
                   "instance per sample from the row's env_args, in isolated processes.")
    env_timeout_s: float = doc(10.0, "With rollout.env: time limit per environment call.",
                               lo=0.001)
    env_memory_mb: int = doc(1024, "With rollout.env: memory cap per environment process.", lo=16)
    env_workers: int = doc(2, "With rollout.env: environment processes per rollout worker.", lo=1)
    env_loop: str = doc("episode", "With rollout.env: episode (each on its own clock) or lockstep "
                        "(a turn waits for the slowest step).", choices=("episode", "lockstep"))
    max_turns: int = doc(4, "With rollout.tools or env: model turns per sample at most.", lo=1)
    max_total_tokens: int = doc(256, "With rollout.tools or rollout.env: tokens after the "
                                "prompt at most, all turns and tool/user messages together (each turn is also capped at "
                                "rollout.max_new_tokens).", lo=1)
    tool_timeout_s: float = doc(10.0, "With rollout.tools: time limit per tool call; a call "
                                "past it becomes an error message the model reads.", lo=0.001)
    tool_max_chars: int = doc(1000, "A tool result or observation longer than this is cut.", lo=1)
    max_batch: int = doc(64, "Sequences generated together by one engine call.", lo=1)
    dtype: str = doc("auto", "Rollout engine dtype; auto = model.dtype (the learner's), so rollout "
                     "log-probs are the learner's numbers. bfloat16 vLLM runs ~2.3x faster on "
                     "CPU but its log-probs differ by ~0.04 per token on average.",
                     choices=("auto", "float32", "bfloat16", "float16"))
    mode: str = doc("split", "split: rollout workers on GPUs of their own (weights broadcast "
                    "from the learner); colocated: each rollout worker shares a GPU with a "
                    "learner rank, its vLLM engine sleeps (weights offloaded, KV cache freed) "
                    "from the advantage stage to the weight sync. On CPU sleep is a no-op.",
                    choices=("split", "colocated"))
    tensor_parallel_size: int = doc(1, "vLLM only: GPUs (tensor-parallel workers) per rollout "
                                    "worker; split mode.", lo=1)
    kv_cache_gb: float | None = doc(
        None, "vLLM only: KV-cache size in GiB; default on CPU: room for one step's samples at "
        "the run's longest prompt + rollout.max_new_tokens each (at least one sequence of the "
        "model's length); on GPU what gpu_memory_utilization leaves.", lo=0.001)
    vllm_in_process: bool | None = doc(
        None, "vLLM only: run the engine core and its worker inside the rollout actor instead "
        "of two child processes. None: yes on CPU (two processes and ~1.5 GiB fewer, every "
        "core generates), no on GPUs.")
    gpu_memory_utilization: float | None = doc(
        None, "vLLM only: share of its GPU's memory an engine may take (weights + KV cache). "
        "None: 0.9 on dedicated rollout GPUs (split mode), 0.5 in colocated mode (room for "
        "the learner), divided among the engines sharing a GPU.", lo=0.01, hi=1.0)
    enforce_eager: bool | None = doc(
        None, "vLLM only: run without CUDA graphs. None: CUDA graphs on GPUs (captured at "
        "start-up; faster decoding), eager on CPU.")
    sync_timeout_s: float = doc(300.0, "Broadcast transport: a weight push that takes longer "
                                "fails (its group is torn down), the rollout workers that did "
                                "not finish are restarted and the push runs again over a new "
                                "group.", lo=1.0)
    verify_sync: bool = doc(True, "Every weight sync checked end to end: each receiver "
                            "compares a fingerprint of every tensor that arrives with the "
                            "learner's (workers/fingerprint.py) and the run stops on a "
                            "difference, a missing tensor or a stale version.")
    weight_transport: str = doc("auto", "How new weights reach the rollout engines. ray: "
                                "through the Ray object store; broadcast: learner rank 0 "
                                "broadcasts them to every engine worker over a sync group (NCCL "
                                "on GPUs, gloo on CPU); auto: broadcast on CPU and on GPUs in "
                                "split mode, ray for colocated GPU runs.", choices=("auto", "ray", "broadcast"))


@dataclass
class RewardTermConfig:
    name: str = doc("accuracy", "Reward: a built-in name or an import path file.py:fn / pkg.mod:fn.")
    weight: float = doc(1.0, "Weight of this term in the total reward.")
    kwargs: dict = doc({}, "Keyword arguments passed to the reward function.")


@dataclass
class RewardConfig:
    terms: list[RewardTermConfig] = doc([RewardTermConfig()], "Reward terms, summed with weights.")
    num_workers: int = doc(1, "Reward processes (0 = score in-process).", lo=0)
    timeout_s: float = doc(10.0, "Time limit per reward call; a hung call gets the fallback.", lo=0.01)
    fallback: float = doc(0.0, "Reward given to a sample whose reward call failed.")
    max_failure_frac: float = doc(0.5, "Abort when more than this fraction of a batch fails.",
                                  lo=0.0, hi=1.0)


@dataclass
class ChordConfig:
    mu_peak: float = doc(0.5, "CHORD: peak weight mu of the expert term; the GRPO part weighs "
                         "1 - mu.", lo=0.0, hi=1.0)
    mu_valley: float = doc(0.02, "CHORD: mu after the cosine decay.", lo=0.0, hi=1.0)
    warmup_steps: int = doc(0, "CHORD: steps of linear mu warm-up from 0 to mu_peak.", lo=0)
    decay_steps: int = doc(16, "CHORD: steps of cosine mu decay from mu_peak to mu_valley.", lo=0)
    expert_ratio: float = doc(0.2, "CHORD: fraction of each step's train batch that are "
                              "demonstration rows (the prompts' `demonstration`); 0.2 with 64 "
                              "sampled rows adds 16.", lo=0.0, hi=0.9)
    phi: bool = doc(True, "CHORD: weight expert tokens by p(1-p) (CHORD-phi); false: SFT weights.")
    cutoff_prob: float | None = doc(None, "CHORD: expert tokens the policy already gives "
                                    "p > this get weight 0.", lo=0.0, hi=1.0)


@dataclass
class PrefixConfig:
    fraction: float = doc(0.5, "Prefix-RFT: fraction of each prompt's rollout.n samples that "
                          "continue from a demonstration prefix (rounded).", lo=0.0, hi=1.0)
    low_start: float = doc(0.5, "Prefix-RFT: lowest prefix ratio (share of the demonstration's "
                           "tokens) at step 0.", lo=0.0, hi=1.0)
    high_start: float = doc(0.95, "Prefix-RFT: highest prefix ratio at step 0.", lo=0.0, hi=1.0)
    low_end: float = doc(0.05, "Prefix-RFT: lowest prefix ratio at the last step.", lo=0.0, hi=1.0)
    high_end: float = doc(0.5, "Prefix-RFT: highest prefix ratio at the last step.", lo=0.0, hi=1.0)
    schedule: str = doc("cosine", "Prefix-RFT: how the ratio window moves from start to end over "
                        "train.steps.", choices=("constant", "linear", "cosine"))
    beta_a: float = doc(1.0, "Prefix-RFT: ratio = low + (high - low) * Beta(beta_a, beta_b); "
                        "1, 1 is uniform.", lo=0.0)
    beta_b: float = doc(1.0, "Prefix-RFT: second Beta shape.", lo=0.0)
    entropy_top_frac: float = doc(0.2, "Prefix-RFT: prefix tokens keep their advantage only "
                                  "among the step's highest-entropy fraction (0.2 = top 20%); "
                                  "the others get advantage 0 and stay in the token counts.",
                                  lo=0.0, hi=1.0)
    clip_low: float | None = doc(None, "Prefix-RFT: PPO clip below 1 for prefix tokens "
                                 "(default algo.clip_low).", lo=0.0)
    clip_high: float | None = doc(None, "Prefix-RFT: PPO clip above 1 for prefix tokens "
                                  "(default algo.clip_high).", lo=0.0)
    group_by: str = doc("prompt_prefix", "Prefix-RFT baseline of the sampled tokens: "
                        "prompt_prefix (prefixed and plain samples of a prompt are separate "
                        "groups, as in the paper) or prompt (one mixed group per prompt). "
                        "Either way the forced prefix tokens get (reward - mean reward of the "
                        "prompt's plain samples) / (samples sharing the prefix).",
                        choices=("prompt_prefix", "prompt"))


@dataclass
class PPOConfig:
    critic_lr: float = doc(1e-5, "PPO: learning rate of the critic (a value head on its own copy "
                           "of the policy's backbone; schedule and warm-up as train.*).", lo=0.0)
    value_clip: float | None = doc(0.2, "PPO: the value loss keeps the new value within this of "
                                   "the rollout-time value (clipped loss); null: no clipping.",
                                   lo=0.0)
    kl_in_reward: bool = doc(False, "PPO: the older spelling of algo.kl_in_reward (either "
                             "one puts the KL penalty in the reward).")


@dataclass
class SelfRewardConfig:
    sft_model: str | None = doc(None, "Self-Rewarding PPO: pi_SFT of the reward (folder, alias or "
                                "hub id); unset: the run first fine-tunes model.name on the "
                                "rows' demonstrations (sft.*) into <run folder>/sft.")
    base_model: str | None = doc(None, "Self-Rewarding PPO: pi_base of the reward; default: "
                                 "model.name.")
    norm: str = doc("none", "Self-Rewarding PPO: reward = sum_t log pi_SFT - log pi_base over the "
                    "response, then none | token_mean (divided by its token count) | "
                    "group_zscore (within each prompt's samples) | batch_zscore | batch_std "
                    "(divided by the batch std, sign kept).",
                    choices=names_in("rlft.algos.self_rewarding:SELF_REWARD_NORMS"))
    init_from_sft: bool = doc(True, "Self-Rewarding PPO: the policy, critic and KL reference start "
                              "from pi_SFT; false: from model.name.")


@dataclass
class RolloutISConfig:
    mode: str = doc("auto", "Rollout correction of the PPO loss for the rollout-vs-learner "
                    "mismatch (mismatch/* metrics): auto = tis when train.max_staleness >= 1, "
                    "else none; tis = truncated IS, weight min(pi_old / pi_rollout, cap); mis = "
                    "masked IS, drop tokens (or sequences) whose ratio leaves [low, high]. Use "
                    "one when mismatch/logprob_abs_diff is well above 0 (bf16 or vLLM rollouts, "
                    "long responses): TIS keeps every sample, MIS discards the worst.",
                    choices=("auto", "none", "tis", "mis"))
    level: str = doc("token", "Rollout correction per token, or per sequence (one weight per "
                     "sample: the product of its token ratios; stricter, suits long outputs).",
                     choices=("token", "sequence"))
    cap: float = doc(2.0, "TIS: the weight's upper bound C.", lo=1.0)
    low: float = doc(0.5, "MIS: smallest ratio kept.", lo=0.0, hi=1.0)
    high: float = doc(2.0, "MIS: largest ratio kept.", lo=1.0)


@dataclass
class AlgoConfig:
    name: str = doc("grpo", "Algorithm spec (rlft/algos/<name>.py).",
                    choices=names_in("rlft.algos.catalogue:ALGORITHMS"))
    advantage: str | None = doc(None, "Override the spec's advantage estimator; Prefix-RFT's "
                                "default is dr_grpo, as in its paper.",
                                choices=names_in("rlft.algos.advantages:ADVANTAGES"))
    eps: float = doc(1e-6, "Std floor in group/batch normalisation.", lo=0.0)
    gamma: float = doc(1.0, "Discount.", lo=0.0, hi=1.0)
    lam: float = doc(1.0, "GAE lambda.", lo=0.0, hi=1.0)
    clip_low: float = doc(0.2, "PPO ratio clip below 1 (epsilon_low).", lo=0.0)
    clip_high: float = doc(0.2, "PPO ratio clip above 1 (epsilon_high; DAPO clip-higher uses 0.28).",
                           lo=0.0)
    dual_clip: float | None = doc(None, "Dual-clip constant c > 1 for negative advantages.", lo=1.0)
    kl_coef: float = doc(0.0, "Weight of the KL(policy || reference) loss term (or, with "
                         "algo.kl_in_reward, of the per-token penalty in the reward); 0 disables "
                         "it and the reference model.", lo=0.0)
    kl_estimator: str = doc("k3", "KL estimator of the loss term (k3: unbiased, >= 0, verl's "
                            "low_var_kl).", choices=("k1", "k2", "k3"))
    kl_in_reward: bool = doc(False, "Put the KL penalty in the reward instead of the loss: "
                             "r_t -= kl_coef * KL_t on every response token (InstructGPT, "
                             "REINFORCE++), for every estimator.")
    kl_reward_estimator: str = doc("k1", "KL estimator of the in-reward penalty: k1 (log "
                                   "ratio, verl's kl_penalty=kl) makes the reward's score-"
                                   "function gradient the KL's; k3's is biased.",
                                   choices=("k1", "k2", "k3"))
    entropy_coef: float = doc(0.0, "Entropy bonus weight.", lo=0.0)
    loss_agg: str = doc("token_mean", "How per-token losses are reduced.",
                        choices=names_in("rlft.algos.aggregation:AGGREGATIONS"))
    filter_groups: bool = doc(False, "DAPO dynamic sampling: drop groups whose rewards are all "
                              "equal (zero advantage).")
    filter_rounds: int = doc(1, "DAPO dynamic sampling: prompt batches drawn per step at most, "
                             "to refill the groups that were dropped.", lo=1)
    overlong_buffer: int = doc(0, "DAPO soft overlong punishment: responses longer than "
                               "rollout.max_new_tokens - this many sampled tokens lose reward "
                               "linearly, down to -algo.overlong_penalty at the cap; 0 = off.",
                               lo=0)
    overlong_penalty: float = doc(1.0, "DAPO: the overlong punishment at rollout.max_new_tokens.",
                                  lo=0.0)
    filter_truncated: bool = doc(False, "DAPO overlong filtering: responses cut at "
                                 "rollout.max_new_tokens (finish reason 'length') carry no loss "
                                 "(they still count in their group's baseline).")
    rollout_is: RolloutISConfig = doc(RolloutISConfig(), "Rollout-vs-learner mismatch correction "
                                      "(TIS / MIS) of the PPO loss.")
    chord: ChordConfig = doc(ChordConfig(), "CHORD settings (algo.name=chord).")
    prefix: PrefixConfig = doc(PrefixConfig(), "Prefix-RFT settings (algo.name=prefix_rft).")
    ppo: PPOConfig = doc(PPOConfig(), "PPO critic settings (algo.name=ppo, self_rewarding_ppo).")
    self_reward: SelfRewardConfig = doc(SelfRewardConfig(), "Self-Rewarding PPO settings "
                                        "(algo.name=self_rewarding_ppo).")


@dataclass
class TrainConfig:
    steps: int = doc(16, "Training steps (one rollout batch and train.epochs x "
                     "train.minibatches optimizer steps each).", lo=1)
    epochs: int = doc(1, "Passes over each rollout batch (PPO epochs). More than one update "
                      "per batch takes PPO's ratio against the sampling policy, so the clip "
                      "binds.", lo=1)
    minibatches: int = doc(1, "Optimizer steps per epoch: the batch's prompt groups are split "
                           "into this many minibatches (whole groups, reshuffled each epoch); "
                           "at most rollout.prompts_per_step.", lo=1)
    seed: int = doc(0, "Seed for data order, sampling and initialisation.")
    lr: float = doc(2e-5, "Peak learning rate.", lo=0.0)
    lr_schedule: str = doc("constant", "Decay after warm-up.", choices=("constant", "cosine", "linear"))
    warmup_steps: int = doc(0, "Linear learning-rate warm-up over the first N training steps "
                            "(warm-up and decay advance with every optimizer step).", lo=0)
    weight_decay: float = doc(0.0, "AdamW weight decay.", lo=0.0)
    max_grad_norm: float = doc(1.0, "Gradient clipping norm.", lo=0.0)
    micro_batch_tokens: int | None = doc(
        None, "Token budget of one learner micro-batch (real tokens with train.packing, rows x "
        "longest row without); default 768 on CPU (small buffers, reused every micro-batch; "
        "1024 is ~10 % faster at 0.35 GiB more), 8192 on GPU.", lo=1)
    packing: bool = doc(True, "Learner runs each micro-batch's rows back to back without "
                        "padding (block-diagonal attention; varlen FlashAttention on GPU).")
    compile: bool = doc(False, "torch.compile each decoder layer of the learner (first steps "
                        "are slower while it compiles).")
    learner_workers: int = doc(1, "Learner ranks (FSDP data-parallel world size).", lo=1)
    max_nonfinite_steps: int = doc(3, "Abort after this many NaN/inf updates in a row.", lo=1)
    max_staleness: int = doc(0, "Asynchronous training: the rollout workers sample up to K "
                             "batches ahead while the learner updates, so a batch is trained at "
                             "most K policy versions after the weights that sampled it; 0 = the "
                             "synchronous loop. K >= 1 needs rollout.mode=split and a "
                             "correction towards the behaviour policy (algo.rollout_is.mode: "
                             "tis by default, or mis).", lo=0)
    stale_policy: str = doc("regenerate", "A batch older than train.max_staleness versions at "
                            "train time: regenerate (sample the same prompts again with the "
                            "current weights) or drop (train on fresh prompts instead; the "
                            "dropped prompts are counted in async/dropped_stale).",
                            choices=("regenerate", "drop"))
    eval_every: int = doc(0, "Evaluate on data.eval_split every N steps with the running rollout "
                          "workers; eval/* metrics join that step's record (0 = off).", lo=0)
    eval_prompts: int = doc(64, "Prompts per in-loop evaluation: the first N of data.eval_split "
                            "(0 = all).", lo=0)
    eval_threshold: float = doc(0.5, "Evaluation: a sample counts as correct for pass@k when its "
                                "total reward is >= this.")


@dataclass
class SftConfig:
    steps: int = doc(32, "SFT (`rlft sft`, Self-Rewarding PPO's first stage): optimizer steps on "
                     "the rows' demonstrations (prompt tokens masked out).", lo=1)
    batch_size: int = doc(8, "SFT: demonstrations per step.", lo=1)
    lr: float = doc(1e-5, "SFT: learning rate (constant; train.* gives the rest).", lo=0.0)
    out: str | None = doc(None, "`rlft sft`: output Hugging Face folder; default "
                          "<logging.run_dir>/<logging.run_name or sft-TIME>/model.")


@dataclass
class CheckpointConfig:
    every: int = doc(0, "Save every N steps (0 = only at the end).", lo=0)
    keep: int = doc(2, "Complete checkpoints to keep.", lo=1)


@dataclass
class LoggingConfig:
    run_dir: str = doc("runs", "Folder that holds run folders.")
    run_name: str | None = doc(None, "Run folder name; default: <algo>-<timestamp>.")
    loggers: list = doc(["console", "jsonl"], "Metric sinks: console, jsonl, wandb, "
                        "tensorboard (<run>/tensorboard/; needs `pip install tensorboard`).")
    wandb_project: str = doc("rlft", "wandb project (offline unless a key is configured).")


@dataclass
class RayConfig:
    address: str | None = doc(None, "Ray cluster to join; default: RAY_ADDRESS, else a local one.")
    num_cpus: int | None = doc(None, "CPUs for a local cluster (default: all).", lo=1)
    max_restarts: int = doc(3, "Times Ray restarts a dead rollout or reward actor (learners "
                            "are never restarted: their state is in the last checkpoint).", lo=0)
    max_task_retries: int = doc(3, "Times a call to a restarted rollout or reward actor is "
                                "retried before the step fails.", lo=0)
    restart_timeout_s: float = doc(300.0, "Seconds to wait for Ray to restart a rollout worker "
                                   "that became unavailable mid-call (its node died: on a "
                                   "surviving or replacement node) before the run stops with "
                                   "its resume command.", lo=0.0)
    learner_resources: dict = doc({}, "Custom Ray resources each learner (and critic) rank "
                                  "reserves, e.g. {trainer: 1}: ranks go only to nodes started "
                                  "with `ray start --resources='{\"trainer\": N}'`.")
    rollout_resources: dict = doc({}, "Custom Ray resources each rollout worker reserves "
                                  "(as ray.learner_resources).")
    check_resources: bool = doc(True, "Compare the run's demand (GPUs, CPUs, custom resources) "
                                "with the cluster before any actor starts and fail at once if it "
                                "cannot fit; false on an autoscaling cluster that grows on demand.")
    placement_timeout_s: float = doc(120.0, "Seconds to wait for a placement group (colocated "
                                     "GPU runs) before failing with what is missing.", lo=1.0)
    cpu_allocator: str = doc("auto", "malloc of the learner, critic and rollout processes on "
                             "CPU runs. tcmalloc keeps freed memory for reuse without glibc's "
                             "fragmentation (less memory at the same speed); auto: tcmalloc "
                             "where libtcmalloc-minimal4 is installed, else glibc, kept from "
                             "returning freed activations to the kernel.",
                             choices=("auto", "tcmalloc", "jemalloc", "glibc"))


@dataclass
class Config:
    model: ModelConfig = doc(ModelConfig(), "Policy model.")
    data: DataConfig = doc(DataConfig(), "Prompts.")
    rollout: RolloutConfig = doc(RolloutConfig(), "Sampling.")
    reward: RewardConfig = doc(RewardConfig(), "Rewards.")
    algo: AlgoConfig = doc(AlgoConfig(), "Algorithm.")
    train: TrainConfig = doc(TrainConfig(), "Optimisation.")
    sft: SftConfig = doc(SftConfig(), "Supervised fine-tuning on demonstrations.")
    checkpoint: CheckpointConfig = doc(CheckpointConfig(), "Checkpoints.")
    logging: LoggingConfig = doc(LoggingConfig(), "Metrics.")
    ray: RayConfig = doc(RayConfig(), "Cluster.")
