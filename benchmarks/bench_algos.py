"""Algorithm-library micro-benchmarks (CPU); prints a table, asserts nothing on timing.

1. GRPO advantages, vectorised (index_add) vs a Python loop over groups.
2. Token log-probs + entropy, forward and backward: `logprobs_from_hidden`
   (chunked, logits recomputed in backward) vs full logits + log_softmax.
   Peak memory is the growth of the process's maximum resident set size
   (getrusage ru_maxrss) over a baseline taken after the inputs exist, each
   variant in a fresh subprocess so one variant's freed pages cannot hide the
   other's peak. It counts everything the process touches, so it is an upper
   bound on the tensors alone, measured the same way for both variants.

Run: .venv/bin/python benchmarks/bench_algos.py [--small]
(--small: tiny shapes, a smoke run of the same code paths; its figures mean little)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch

from rlft.algos.advantages import grpo
from rlft.algos.base import AdvantageInputs, AdvantageParams
from rlft.algos.logprobs import logprobs_from_hidden, logprobs_from_logits

N, H, V, CHUNK = 2048, 576, 32_000, 512
B, L, GROUPS = 4096, 256, 512  # GRPO advantages
if "--small" in sys.argv:
    N, H, V, CHUNK = 256, 64, 2048, 64
    B, L, GROUPS = 256, 32, 32


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def grpo_loop(rewards: torch.Tensor, mask: torch.Tensor, group_id: torch.Tensor,
              eps: float) -> torch.Tensor:
    """The obvious implementation: a Python loop over groups (as in verl's reference)."""
    scores = (rewards * mask).sum(-1)  # [B]
    adv = torch.zeros_like(scores)
    for gid in group_id.unique().tolist():
        rows = (group_id == gid).nonzero().squeeze(-1)
        if rows.numel() > 1:
            s = scores[rows]
            adv[rows] = (s - s.mean()) / (s.std() + eps)
    return adv[:, None] * mask  # [B] -> [B, L]


def bench_grpo() -> list[tuple[str, str]]:
    # One thread: these are small latency-bound ops (the training loop's advantage
    # stage), and on a shared 2-core machine OpenMP barriers would dominate.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench_grpo()
    finally:
        torch.set_num_threads(threads)


def _bench_grpo() -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(L)[None, :] < torch.randint(1, L, (B, 1), generator=g)  # [B, L]
    rewards = torch.zeros(B, L)
    rewards[torch.arange(B), mask.sum(-1) - 1] = torch.rand(B, generator=g).round()
    group_id = torch.randperm(B, generator=g) % GROUPS  # interleaved groups of B / GROUPS
    x, p = AdvantageInputs(rewards, mask, group_id), AdvantageParams()
    fast = grpo(x, p).advantages
    slow = grpo_loop(rewards, mask.float(), group_id, p.eps)
    err = float((fast - slow).abs().max())
    t_vec = best_of(lambda: grpo(x, p), 5)
    t_loop = best_of(lambda: grpo_loop(rewards, mask.float(), group_id, p.eps), 2)
    return [
        (f"grpo advantages, B={B}, L={L}, {GROUPS} groups, 1 thread", ""),
        ("  vectorised (index_add)", f"{t_vec * 1e3:8.1f} ms"),
        ("  python loop over groups", f"{t_loop * 1e3:8.1f} ms"),
        ("  speed-up", f"{t_loop / t_vec:8.1f} x   (max |diff| {err:.1e})"),
    ]


def run_variant(name: str) -> dict:
    """Body of one subprocess: forward + backward of one variant, timed, with peak RSS."""
    torch.manual_seed(0)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) * 0.05).requires_grad_(True)
    labels = torch.randint(0, V, (N,))
    g_ent = torch.randn(N)

    def step(n: int) -> None:
        h, y = hidden[:n], labels[:n]
        if name == "chunked":
            lp, ent = logprobs_from_hidden(h, weight, y, chunk=CHUNK)
        else:
            lp, ent = logprobs_from_logits(h @ weight.T, y)
        (lp.sum() + (g_ent[:n] * ent).sum()).backward()

    step(8)  # warm up kernels and thread pools outside the measurement
    hidden.grad = weight.grad = None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seconds = best_of(lambda: step(N), 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - base) / 1024}


def bench_logprobs() -> list[tuple[str, str]]:
    out = {}
    for name in ("naive", "chunked"):
        proc = subprocess.run([sys.executable, __file__, "--variant", name,
                               *(["--small"] if "--small" in sys.argv else [])],
                              capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    nv, ch = out["naive"], out["chunked"]
    full_mib = N * V * 4 / 2**20
    return [
        (f"log-probs + entropy fwd+bwd, N={N}, H={H}, V={V}, chunk={CHUNK}", ""),
        ("  full logits + log_softmax",
         f"{nv['seconds']:8.2f} s   peak +{nv['peak_mib']:5.0f} MiB"),
        ("  chunked, recompute in bwd",
         f"{ch['seconds']:8.2f} s   peak +{ch['peak_mib']:5.0f} MiB"),
        ("  time ratio chunked / full", f"{ch['seconds'] / nv['seconds']:8.2f} x"),
        ("  peak memory ratio full / chunked",
         f"{nv['peak_mib'] / max(ch['peak_mib'], 1.0):8.1f} x"
         f"   (one fp32 [N, V] is {full_mib:.0f} MiB)"),
        ("  memory method", "max-RSS growth, fresh subprocess per variant"),
    ]


def main() -> None:
    start = time.perf_counter()
    rows = bench_grpo() + bench_logprobs()
    width = max(len(k) for k, _ in rows) + 2
    load = os.getloadavg()[0]
    print(f"rlft.algos benchmarks (CPU, {torch.get_num_threads()} threads, "
          f"load average {load:.1f} on {os.cpu_count()} cores)")
    for key, value in rows:
        print(f"{key:<{width}}{value}")
    print(f"total {time.perf_counter() - start:.1f} s; "
          f"grpo times are the best of 5 (loop: 2) runs; log-probs one run after a warm-up")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2])))
    else:
        main()
