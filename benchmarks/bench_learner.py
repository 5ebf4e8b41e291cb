"""Learner update throughput, MFU and peak memory: ours vs a plain PyTorch step.

One GPU, in-process (no Ray), a random-init model with Qwen2-0.5B's shape
(vocab 151936, hidden 896, FFN 4864, 24 layers, 14 query / 2 KV heads, tied
embeddings), no downloads. Each token budget runs, in the same process:
- ours: `Learner.update` (FSDP2 world of one, bf16 compute with fp32 master
  weights, sequence packing with varlen FlashAttention, chunked log-probs, fused
  AdamW; gradient checkpointing where the budget needs it), the whole budget as
  one micro-batch;
- plain: the HF model under bf16 autocast with SDPA, the rows right-padded,
  full fp32 logits -> log_softmax -> gather, the same loss, fused AdamW.
Both optimise the same PPO-clip loss (one update per batch: ratio 1) over the
same rows: lengths drawn uniformly in [seq_len/4, seq_len], a quarter prompt.

FLOPs per step (useful work, the same formula for both):
  6 * N * tokens + 6 * layers * q_dim * sum(n_i^2)
N counts the matmul weights (decoder layers + lm_head; the embedding lookup
is not a matmul); the second term is causal attention (QK^T and AV, forward
and backward) over each sequence's own n_i tokens. MFU = FLOPs / time / 989
TFLOP/s (H100 SXM dense bf16). Padding is work the plain step does but
the formula does not count: that is the point.

    python benchmarks/bench_learner.py                     # 16k and 64k tokens
    python benchmarks/bench_learner.py --tokens 16384 --compile
    python benchmarks/bench_learner.py --small             # CPU smoke run, tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# The GPU benchmarks measure one model shape, defined once (bench_weight_sync.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_weight_sync import QWEN2_05B, SMALL  # noqa: E402

from rlft.types import TrainBatch  # noqa: E402
from rlft.workers.learner import Learner, LearnerParams, LossTermSpec  # noqa: E402

PEAK_TFLOPS = 989.0  # H100 SXM, dense bf16
TERM = LossTermSpec("ppo_clip", 1.0, "policy", "token_mean")
GIB = 1 << 30


@dataclass(frozen=True)
class Row:
    step: str
    tokens: int
    ckpt: bool
    seconds: float | None  # per update; None: out of memory
    peak_gib: float | None
    flops: float

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.seconds is None else self.tokens / self.seconds

    def mfu(self, cuda: bool) -> float | None:
        if self.seconds is None or not cuda:
            return None
        return self.flops / self.seconds / (PEAK_TFLOPS * 1e12)


def step_flops(cfg: Qwen2Config, lengths: list[int]) -> float:
    h, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    n = layers * (h * q + 2 * h * kv + q * h + 3 * h * f) + cfg.vocab_size * h
    return 6.0 * n * sum(lengths) + 6.0 * layers * q * sum(x * x for x in lengths)


def make_batch(vocab: int, tokens: int, seq_len: int, seed: int = 0) -> TrainBatch:
    """Rows of random lengths in [seq_len/4, seq_len] adding up to `tokens` exactly."""
    g = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < tokens:
        lengths.append(int(torch.randint(seq_len // 4, seq_len + 1, (1,), generator=g)))
    lengths[-1] -= sum(lengths) - tokens
    if lengths[-1] < 8:  # fold a stub into the previous row
        lengths[-2] += lengths.pop()
    B, L = len(lengths), max(lengths)
    n = torch.tensor(lengths)
    pos = torch.arange(L)[None, :]
    am = pos < n[:, None]  # [B, L]
    resp = am & (pos >= (n // 4).clamp(min=1)[:, None])
    ids = torch.where(am, torch.randint(0, vocab, (B, L), generator=g), 0)
    adv = torch.randn(B, 1, generator=g).expand(B, L) * resp
    return TrainBatch(input_ids=ids, attention_mask=am, response_mask=resp,
                      advantages=adv.contiguous(), group_id=torch.arange(B) // 8,
                      policy_version=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, steps: int
          ) -> tuple[float, float | None]:
    """Mean seconds per call after `warmup` calls, and peak GiB over the timed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return seconds, peak


def oom_safe(fn: Callable[[], tuple[float, float | None]]) -> tuple[float | None, float | None]:
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return None, None
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_ours(cfg: Qwen2Config, batch: TrainBatch, device: torch.device, ckpt: bool,
             compile_: bool, args: argparse.Namespace) -> tuple[float, float | None]:
    def factory() -> Qwen2ForCausalLM:
        with torch.device(device):  # random init on the GPU: seconds, not a minute on CPU
            return Qwen2ForCausalLM(cfg).float()

    longest = int(batch.attention_mask.sum(-1).max())
    params = LearnerParams(
        lr=1e-6, param_dtype="bfloat16" if device.type == "cuda" else "float32", packing=True,
        micro_batch_tokens=max(int(batch.attention_mask.sum()), longest),
        logprob_chunk=args.chunk, grad_checkpointing=ckpt, compile=compile_)
    lrn = Learner(factory, params)
    try:
        return timed(lambda: lrn.update(batch, [TERM]), device, args.warmup, args.steps)
    finally:
        lrn.shutdown()


def run_plain(cfg: Qwen2Config, batch: TrainBatch, device: torch.device, ckpt: bool,
              args: argparse.Namespace) -> tuple[float, float | None]:
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).float()
    model.set_attn_implementation("sdpa")
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    ids, am = batch.input_ids.to(device), batch.attention_mask.to(device)
    resp, adv = batch.response_mask[:, 1:].to(device), batch.advantages[:, 1:].to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            logits = model(input_ids=ids, attention_mask=am.long(), use_cache=False).logits
        logp = logits[:, :-1].float().log_softmax(-1)  # [B, L-1, V] full fp32
        lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        ratio = torch.exp(lp - lp.detach())  # one update per batch: old = current
        loss = -(ratio * adv)[resp].sum() / resp.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, device, args.warmup, args.steps)


def fmt(x: float | None, spec: str) -> str:
    return "OOM" if x is None else format(x, spec)


def table(rows: list[Row], cuda: bool) -> str:
    lines = ["| step | tokens | grad ckpt | s/update | tokens/s | MFU | peak GiB |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mfu = r.mfu(cuda)
        lines.append(f"| {r.step} | {r.tokens} | {'on' if r.ckpt else 'off'} | "
                     f"{fmt(r.seconds, '.3f')} | {fmt(r.tokens_per_s, ',.0f')} | "
                     f"{'n/a' if mfu is None and r.seconds else fmt(mfu, '.1%')} | "
                     f"{'n/a' if not cuda else fmt(r.peak_gib, '.1f')} |")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    out = []
    for tokens in sorted({r.tokens for r in rows}):
        plain = [r for r in rows if r.tokens == tokens and r.step == "plain"]
        for ours in (r for r in rows if r.tokens == tokens and r.step != "plain"):
            if not plain or plain[0].seconds is None:
                out.append(f"- {tokens} tokens: {ours.step} ran; plain ran out of memory")
            elif ours.seconds is not None:
                mem = "" if ours.peak_gib is None else \
                    f", peak memory {ours.peak_gib / plain[0].peak_gib:.2f}x plain"
                out.append(f"- {tokens} tokens: {ours.step} {plain[0].seconds / ours.seconds:.2f}x "
                           f"plain's tokens/s{mem}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--tokens", default=None, help="comma-separated budgets (default 16384,65536)")
    ap.add_argument("--seq-len", type=int, default=None, help="longest row (default 2048)")
    ap.add_argument("--ckpt", choices=("auto", "on", "off"), default="auto",
                    help="gradient checkpointing; auto: on above 32768 tokens")
    ap.add_argument("--compile", action="store_true", help="also run ours with train.compile")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain reference step")
    ap.add_argument("--chunk", type=int, default=2048, help="log-prob chunk (tokens)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on CPU (one: steadier on a busy machine)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = Qwen2Config(**(SMALL if args.small else QWEN2_05B))
    budgets = [int(t) for t in (args.tokens or ("1024,4096" if args.small
                                                else "16384,65536")).split(",")]
    seq_len = args.seq_len or (256 if args.small else 2048)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
    print(f"device: {gpu}; torch {torch.__version__}; model: Qwen2 "
          f"{'small' if args.small else '0.5B shape'} (vocab {cfg.vocab_size}, hidden "
          f"{cfg.hidden_size}, {cfg.num_hidden_layers} layers)\ncommand: python "
          f"{' '.join(sys.argv)}", flush=True)
    rows: list[Row] = []
    for tokens in budgets:
        batch = make_batch(cfg.vocab_size, tokens, seq_len)
        lengths = batch.attention_mask.sum(-1).tolist()
        flops = step_flops(cfg, lengths)
        ckpt = args.ckpt == "on" or (args.ckpt == "auto" and tokens > 32768)
        variants = [("ours", False)] + ([("ours+compile", True)] if args.compile else [])
        for name, comp in variants:
            s, peak = oom_safe(lambda b=batch, c=ckpt, k=comp: run_ours(cfg, b, device, c, k,
                                                                        args))
            rows.append(Row(name, tokens, ckpt, s, peak, flops))
            print(f"  {name} {tokens} tokens: {fmt(s, '.3f')} s/update", flush=True)
        if not args.no_plain:
            s, peak = oom_safe(lambda b=batch, c=ckpt: run_plain(cfg, b, device, c, args))
            rows.append(Row("plain", tokens, ckpt, s, peak, flops))
            print(f"  plain {tokens} tokens ({len(lengths)} rows padded to {max(lengths)}): "
                  f"{fmt(s, '.3f')} s/update", flush=True)
    print()
    print(table(rows, cuda))
    print()
    print(ratios(rows))
    if not cuda:
        print("\n(CPU run: MFU and memory are GPU figures and are not reported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
