"""One GRPO step, ours vs TRL's GRPOTrainer, same model, batch, lengths and GPU.

In-process, no Ray. The model is random-init with Qwen2-0.5B's shape (no
downloads), saved once with a synthetic word-level tokenizer ("w2".."w{V-1}");
prompts are random words, and the reward is the share of even-numbered words
in the completion (cheap, and it varies within a group, so advantages do too).
Both sides sample P prompts x G completions of up to --new-tokens tokens
(a random model rarely samples EOS, so rows run to the limit), temperature 1,
one optimizer step per batch, no KL term, bf16 compute with fp32 master weights.

Ours, stage by stage (rlft's own pieces, as the training loop calls them):
  rollout   HFEngine.generate (bf16 engine on the same GPU), less its scoring pass
  logprobs  the engine's scoring pass (rollout log-probs, one forward)
  reward    RewardService.score (in-process)
  advantage collate + the GRPO estimator
  update    Learner.update (FSDP2, packing, chunked log-probs, fused AdamW)
  sync      learner -> engine weights, device to device
TRL: rollout (`_generate`), reward (`_calculate_rewards`), logprobs (log-prob
passes inside `_generate_and_score_completions`), update (the rest of the
step). TRL is optional: without it (or `datasets`, which it needs) its column
is skipped with a message. Seconds are means over --steps after --warmup.

    python benchmarks/bench_grpo_vs_trl.py
    python benchmarks/bench_grpo_vs_trl.py --small       # CPU smoke run, tiny shapes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_weight_sync import (  # noqa: E402
    PAD,
    QWEN2_05B,
    SMALL,
    save_random_model,
    synthetic_tokenizer,
)

from rlft.algos.catalogue import build_algorithm  # noqa: E402
from rlft.batch.collate import collate, with_advantages  # noqa: E402
from rlft.config import load_config  # noqa: E402
from rlft.rewards.base import RewardTerm  # noqa: E402
from rlft.types import Prompt, PromptBatch  # noqa: E402
from rlft.workers.learner import Learner, LearnerParams  # noqa: E402
from rlft.workers.reward import RewardService  # noqa: E402
from rlft.workers.rollout import HFEngine, SamplingParams  # noqa: E402

STAGES = ("rollout", "logprobs", "reward", "advantage", "update", "sync")


def even_token_reward(completion: str, **fields: Any) -> float:
    """Share of words "wK" with K even.

    >>> even_token_reward("w2 w3 w4 w7")
    0.5
    """
    words = completion.split()
    return sum(w[1:].isdigit() and int(w[1:]) % 2 == 0 for w in words) / max(len(words), 1)


def make_prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[Prompt]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (count, length), generator=g).tolist()  # no EOS / pad
    return [Prompt(uid=str(i), text=" ".join(f"w{t}" for t in row), prompt_ids=tuple(row))
            for i, row in enumerate(ids)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, defaultdict(float)

    def run(self, name: str, fn: Callable, *args: Any, **kw: Any) -> Any:
        sync(self.device)
        start = time.perf_counter()
        out = fn(*args, **kw)
        sync(self.device)
        self.seconds[name] += time.perf_counter() - start
        return out


def run_ours(folder: str, prompts: list[Prompt], args: argparse.Namespace,
             device: torch.device) -> list[dict[str, float]]:
    cfg = load_config(None, [])
    cfg.rollout.n, cfg.rollout.max_new_tokens = args.group, args.new_tokens
    algo = build_algorithm(cfg)  # the real GRPO spec: estimator and loss terms
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    lrn = Learner(folder, LearnerParams(lr=1e-6, param_dtype=dtype, packing=True,
                                        micro_batch_tokens=args.micro_tokens,
                                        grad_checkpointing=args.grad_ckpt, logprob_chunk=2048))
    engine = HFEngine(folder, dtype=getattr(torch, dtype), device=str(device),
                      max_batch=args.prompts * args.group)
    # transformers maps a qwen2 folder to Qwen2Tokenizer (byte-level BPE) whatever its
    # tokenizer_config says, which cannot read the word-level vocabulary: hand it over.
    engine.tok = synthetic_tokenizer(engine.model.config.vocab_size)
    service = RewardService([RewardTerm(f"{Path(__file__).resolve()}:even_token_reward")],
                            num_workers=0)
    history = []
    try:
        for step in range(args.warmup + args.steps):
            t = Timer(device)
            score_pass = engine._score  # time the scoring forward apart from sampling

            def timed_score(*a: Any, _t: Timer = t, _f: Callable = score_pass) -> Any:
                return _t.run("logprobs", _f, *a)

            engine._score = timed_score
            chunk = prompts[step * args.prompts:(step + 1) * args.prompts]
            batch = PromptBatch.plain(chunk, n=args.group, first_group=step * args.prompts)
            sampling = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=step)
            rollouts = t.run("rollout", engine.generate, batch, sampling)
            engine._score = score_pass
            t.seconds["rollout"] -= t.seconds["logprobs"]
            scored = t.run("reward", service.score, rollouts)

            def advantages(s=scored):
                train, token_rewards = collate(s, PAD)
                return with_advantages(train, token_rewards, algo.advantage, algo.adv_params)

            train = t.run("advantage", advantages)
            t.run("update", lrn.update, train, algo.terms(step))
            t.run("sync", lambda: engine.load_weights(lrn.named_weights(cpu=False)))
            history.append(dict(t.seconds))
    finally:
        service.close()
        lrn.shutdown()
    return history[args.warmup:]


def run_trl(folder: str, prompts: list[Prompt], args: argparse.Namespace,
            device: torch.device) -> list[dict[str, float]] | str:
    """TRL's GRPOTrainer for warmup + steps steps, or why it could not run."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        return f"skipped: TRL could not be imported ({exc}); pip install trl datasets"
    cuda = device.type == "cuda"
    tok = synthetic_tokenizer(args.vocab)  # see run_ours
    ds = Dataset.from_list([{"prompt": p.text} for p in prompts])

    def even_reward(prompts: list, completions: list, **kw: Any) -> list[float]:
        return [even_token_reward(c) for c in completions]

    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    conf = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0,
        learning_rate=1e-6, beta=0.0, max_steps=args.warmup + args.steps, logging_steps=1,
        report_to="none", save_strategy="no", bf16=cuda, use_cpu=not cuda, seed=0,
        gradient_accumulation_steps=1, gradient_checkpointing=args.grad_ckpt,
        model_init_kwargs={"dtype": torch.float32}, shuffle_dataset=False)
    trainer = GRPOTrainer(model=folder, reward_funcs=even_reward, args=conf, train_dataset=ds,
                          processing_class=tok)
    t = Timer(device)
    depth = {"gen": 0}

    def wrap(name: str, key: str | None, nest: bool = False) -> None:
        fn = getattr(trainer, name, None)
        if fn is None:
            print(f"trl: no GRPOTrainer.{name} in this version; its stage is not split out")
            return

        def timed(*a: Any, **kw: Any) -> Any:
            label = key or ("logprobs" if depth["gen"] else "update_forward")
            depth["gen"] += nest
            try:
                return t.run(label, fn, *a, **kw)
            finally:
                depth["gen"] -= nest

        setattr(trainer, name, timed)

    wrap("_generate_and_score_completions", "generate_and_score", nest=True)
    wrap("_generate", "rollout")
    wrap("_calculate_rewards", "reward")
    wrap("_get_per_token_logps_and_entropies", None)
    history: list[dict[str, float]] = []

    class Steps(TrainerCallback):
        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            sync(device)
            t.seconds.clear()
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            sync(device)
            s = dict(t.seconds)
            total = time.perf_counter() - self.start
            gen = s.pop("generate_and_score", 0.0)
            s.pop("update_forward", None)
            s["logprobs"] = s.get("logprobs", 0.0)
            s["other"] = gen - s.get("rollout", 0.0) - s.get("reward", 0.0) - s["logprobs"]
            s["update"] = total - gen
            history.append(s)

    trainer.add_callback(Steps())
    trainer.train()
    return history[args.warmup:]


def mean_stages(history: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for h in history for k in h}
    return {k: sum(h.get(k, 0.0) for h in history) / len(history) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (8)")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="(128)")
    ap.add_argument("--new-tokens", type=int, default=None, help="(256)")
    ap.add_argument("--micro-tokens", type=int, default=32768, help="learner micro-batch")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing, both")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on CPU (one: steadier on a busy machine)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-trl", action="store_true")
    args = ap.parse_args(argv)
    small = args.small
    args.prompts = args.prompts or (2 if small else 8)
    args.prompt_tokens = args.prompt_tokens or (16 if small else 128)
    args.new_tokens = args.new_tokens or (16 if small else 256)
    cfg = Qwen2Config(**(SMALL if small else QWEN2_05B))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"device: {gpu}; torch {torch.__version__}; model: Qwen2 "
          f"{'small' if small else '0.5B shape'}; {args.prompts} prompts x {args.group} "
          f"samples, {args.prompt_tokens} prompt + {args.new_tokens} new tokens\n"
          f"command: python {' '.join(sys.argv)}", flush=True)
    args.vocab = cfg.vocab_size
    prompts = make_prompts(cfg.vocab_size, args.prompts * (args.warmup + args.steps),
                           args.prompt_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(cfg, str(Path(tmp) / "model"), device)
        ours = mean_stages(run_ours(folder, prompts, args, device))
        torch.cuda.empty_cache() if device.type == "cuda" else None
        trl = "skipped (--no-trl)" if args.no_trl else run_trl(folder, prompts, args, device)
    trl_stages = mean_stages(trl) if isinstance(trl, list) else None
    print("\n| stage | ours s | TRL s |\n| --- | ---: | ---: |")
    for k in (*STAGES, "other"):
        if k in ours or (trl_stages and k in trl_stages):
            theirs = f"{trl_stages.get(k, 0.0):.3f}" if trl_stages else "-"
            print(f"| {k} | {ours.get(k, 0.0):.3f} | {theirs} |")
    total = sum(ours.values())
    theirs_total = sum(trl_stages.values()) if trl_stages else None
    print(f"| **step** | **{total:.3f}** | "
          f"{'-' if theirs_total is None else f'**{theirs_total:.3f}**'} |")
    if theirs_total is not None:
        print(f"\nTRL step time / ours: {theirs_total / total:.2f} (above 1: ours is faster)")
    else:
        print(f"\nTRL: {trl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
