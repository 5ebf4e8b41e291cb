"""Rollout throughput: VLLMEngine vs HFEngine on SmolLM2-135M-Instruct (CPU).

Same prompts for every engine: 16 chat prompts, n=8 samples each, up to 64 new
tokens, temperature 1. Per engine it reports start-up time, generation time,
sampled tokens and tokens/s; for vLLM also how far its rollout log-probs are
from a transformers fp32 forward pass (the learner's numbers) and the time of
one weight sync (`load_weights` of the full fp32 state dict). Prints a table
and the vLLM/HF throughput ratio; asserts nothing on timing.

    python benchmarks/bench_rollout.py [--engines vllm-float32,vllm-bfloat16,hf] [--small]

--small: a smoke run (tiny-random model, vllm-float32 and hf, 2 prompts x 2
samples, 8 new tokens); its figures mean little.

Threads: this process (transformers generate and the reference forward)
uses `--threads` torch threads, default 1. vLLM's worker binds its own, by
default every core but one, which stays with the engine-core process (on 2
cores: one thread each); VLLM_CPU_NUM_OF_RESERVED_CPU=0 gives it all. On a
small shared machine two OpenMP threads can be ~10x slower than one, since a
parallel region waits for its slowest thread and a busy core stalls it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from rlft.models import load_tokenizer, resolve_model
from rlft.types import Prompt, PromptBatch, Rollouts
from rlft.workers.rollout import HFEngine, SamplingParams

QUESTIONS = [
    "What is 17 + 25?", "Name a prime number above 50.", "What colour is the sky?",
    "Write a haiku about rain.", "What is the capital of France?", "Explain gravity briefly.",
    "How many legs does a spider have?", "What is 9 times 8?", "Give me a synonym for happy.",
    "Why do leaves fall in autumn?", "What is the boiling point of water?",
    "Translate 'hello' into Spanish.", "List three fruits.", "What is 144 divided by 12?",
    "Who wrote Hamlet?", "Describe a cat in one sentence.",
]


@dataclass(frozen=True)
class Result:
    engine: str
    start_s: float
    gen_s: float
    tokens: int
    max_dlogp: float | None = None  # vs a transformers fp32 forward
    mean_dlogp: float | None = None
    sync_s: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.gen_s


def make_batch(model: str, num_prompts: int, n: int) -> PromptBatch:
    tok = load_tokenizer(model)
    prompts = []
    for i, q in enumerate((QUESTIONS * 4)[:num_prompts]):
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompts.append(Prompt(uid=str(i), text=text, prompt_ids=tuple(ids)))
    return PromptBatch.plain(prompts, n=n)


def sampled_tokens(out: Rollouts) -> int:
    return sum(len(r) - k for r, k in zip(out.response_ids, out.prefix_len))


@torch.no_grad()
def logprob_gap(model: torch.nn.Module, out: Rollouts) -> tuple[float, float]:
    """(max, mean) |engine log-prob - transformers fp32 log-prob| over all
    response tokens, one unpadded forward per sequence."""
    gaps: list[torch.Tensor] = []
    for b in range(len(out)):
        ids = torch.tensor([out.prompt_ids[b] + out.response_ids[b]])  # [1, P+T]
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # [P+T-1, V]
        p = len(out.prompt_ids[b])
        ref = logp[p - 1:].gather(1, ids[0, p:, None])[:, 0]  # [T]
        gaps.append((ref - torch.tensor(out.rollout_logprobs[b])).abs())
    flat = torch.cat(gaps)  # [sum T]
    return flat.max().item(), flat.mean().item()


def timed_generate(engine, batch: PromptBatch, params: SamplingParams) -> tuple[Rollouts, float]:
    engine.generate(PromptBatch.plain(list(batch.prompts[:2]), n=2),
                    SamplingParams(max_new_tokens=4, seed=0))  # warm-up
    start = time.perf_counter()
    out = engine.generate(batch, params)
    return out, time.perf_counter() - start


def bench_vllm(path: str, dtype: str, batch: PromptBatch, params: SamplingParams,
               reference: torch.nn.Module) -> Result:
    from rlft.workers.vllm_engine import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(path, dtype=dtype, seed=0)
    start_s = time.perf_counter() - start
    try:
        out, gen_s = timed_generate(engine, batch, params)
        max_gap, mean_gap = logprob_gap(reference, out)
        state = reference.state_dict()
        start = time.perf_counter()
        engine.load_weights(state.items())
        sync_s = time.perf_counter() - start
    finally:
        engine.close()
    return Result(f"vllm {dtype}", start_s, gen_s, sampled_tokens(out), max_gap, mean_gap,
                  sync_s)


def bench_hf(path: str, batch: PromptBatch, params: SamplingParams) -> Result:
    start = time.perf_counter()
    engine = HFEngine(path, dtype=torch.float32, seed=0, max_batch=128)
    start_s = time.perf_counter() - start
    out, gen_s = timed_generate(engine, batch, params)
    return Result("hf float32", start_s, gen_s, sampled_tokens(out))


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="vllm-float32,vllm-bfloat16,hf")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--small", action="store_true", help="smoke run: tiny model and batch")
    args = ap.parse_args(argv)
    if args.small:
        args.engines, args.model, args.prompts, args.n, args.max_new_tokens = \
            "vllm-float32,hf", "tiny-random", 2, 2, 8
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    batch = make_batch(args.model, args.prompts, args.n)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    results = []
    for name in args.engines.split(","):
        if name == "hf":
            results.append(bench_hf(path, batch, params))
        elif name.startswith("vllm-"):
            results.append(bench_vllm(path, name.removeprefix("vllm-"), batch, params,
                                      reference))
        else:
            raise SystemExit(f"--engines: unknown {name!r}; use hf or vllm-<dtype>")
        print(f"done: {results[-1]}", flush=True)
    print(f"\n{args.prompts} prompts x n={args.n}, <= {args.max_new_tokens} new tokens, T=1, "
          f"{torch.get_num_threads()} torch threads, model {args.model}\n")
    print("| engine | start s | generate s | tokens | tokens/s | max abs dlogp | "
          "mean abs dlogp | weight sync s |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.engine} | {r.start_s:.1f} | {r.gen_s:.1f} | {r.tokens} | "
              f"{r.tokens_per_s:.0f} | {fmt(r.max_dlogp, '.2e')} | {fmt(r.mean_dlogp, '.2e')} | "
              f"{fmt(r.sync_s, '.2f')} |")
    hf = [r for r in results if r.engine.startswith("hf")]
    for r in results:
        if hf and r is not hf[0]:
            print(f"{r.engine} / hf throughput: {r.tokens_per_s / hf[0].tokens_per_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
