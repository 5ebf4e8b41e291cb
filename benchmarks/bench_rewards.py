"""RewardService figures: parallel speed-up on a heavy reward, overhead on a cheap one.

    .venv/bin/python benchmarks/bench_rewards.py [--repeats 5] [--heavy-ms 30] [--small]

(--small: a smoke run of both parts, one repeat of small batches; its figures mean little.)

(a) Heavy: a user-style reward doing pure-Python work (edit-distance similarity
between the completion and the reference, string length calibrated so one call
takes about `--heavy-ms` ms) over `--heavy-batch` samples, scored by
`RewardService(num_workers=2)` and serially in-process (`num_workers=0`).
Both are warmed up first (process start-up, setup hooks), then timed in
alternation, `--repeats` times each, so machine noise hits both alike; the
speed-up is the ratio of the medians. Goal: >= 1.8x on 2 cores.

(b) Cheap: the built-in `accuracy` (math-verify) on builtin:arithmetic
demonstrations (short numeric answers, a quarter of them wrong), batch 64:
the service (2 processes; it scores cheap batches in-process once it has
measured their cost) and the same service forced onto its process pool,
against calling the function directly in a loop. Overhead = service seconds
per batch - loop seconds per batch, given raw (ratio) and as a share of a
training step of `--step-s` seconds. 30 s is a conservative CPU step: the
default run's steps on this 2-core machine take 60-130 s (runs/bench/*/
metrics.jsonl), so the true share is smaller. Goal: <= 5 % of the step.

The machine may be shared: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rlft.data.sources import load_rows
from rlft.rewards.base import RewardTerm, load_term
from rlft.types import Prompt, Rollouts
from rlft.workers.reward import RewardService

HEAVY_FILE = '''
def edit_similarity(completion, *, answer, **fields):
    """1 - Levenshtein distance / longer length: O(len^2) pure Python."""
    prev = list(range(len(answer) + 1))
    for i, a in enumerate(completion, 1):
        cur = [i]
        for j, b in enumerate(answer, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = cur
    return 1.0 - prev[-1] / max(len(completion), len(answer), 1)
'''


def rollouts(completions: list[str], fields: list[dict]) -> Rollouts:
    n = len(completions)
    prompts = tuple(Prompt(uid=f"b#{i}", text=f"q{i}", prompt_ids=(1,), fields=f)
                    for i, f in enumerate(fields))
    return Rollouts(prompt_index=tuple(range(n)), prompts=prompts, prompt_ids=((1,),) * n,
                    response_ids=((2,),) * n, response_text=tuple(completions),
                    rollout_logprobs=((0.0,),) * n, prefix_len=(0,) * n,
                    finish_reason=("stop",) * n, group_id=tuple(range(n)), policy_version=0)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


def heavy_batch(fn: Callable, target_ms: float, batch: int) -> Rollouts:
    """Strings long enough that one call takes about `target_ms` here, now."""
    probe = "ab" * 100
    per = min(timed(lambda: fn(probe, answer=probe[::-1])) for _ in range(5))
    length = max(20, int(200 * (target_ms / 1e3 / per) ** 0.5))  # cost ~ length^2
    texts = [("".join(chr(97 + (i * 7 + k * k) % 26) for k in range(length))) for i in range(batch)]
    answers = [t[::-1] for t in texts]
    return rollouts(texts, [{"answer": a} for a in answers])


def bench_heavy(ns: argparse.Namespace, path: str) -> dict:
    term = RewardTerm(f"{path}:edit_similarity")
    ro = heavy_batch(load_term(term), ns.heavy_ms, ns.heavy_batch)
    serial = RewardService([term], num_workers=0)
    pool = RewardService([term], num_workers=2)
    try:
        serial.score(ro), pool.score(ro)  # warm-up: process start-up, first calls
        # CPU seconds per wall second: how many cores each side actually got (1 and 2
        # on an idle machine). The pool's processes are read from the service itself.
        pids = [p.proc.pid for p in pool._procs]
        s_times, p_times, s_cores, p_cores = [], [], [], []
        for _ in range(ns.repeats):
            cpu = time.process_time()
            s_times.append(timed(lambda: serial.score(ro)))
            s_cores.append((time.process_time() - cpu) / s_times[-1])
            cpu = cpu_s(pids) + time.process_time()  # this process sends and collects
            p_times.append(timed(lambda: pool.score(ro)))
            p_cores.append((cpu_s(pids) + time.process_time() - cpu) / p_times[-1])
    finally:
        pool.close()
    s, p = statistics.median(s_times), statistics.median(p_times)
    return {"serial": s, "pool": p, "per_ms": s / len(ro) * 1e3, "speedup": s / p,
            "ratios": sorted(a / b for a, b in zip(s_times, p_times)),
            "s_cores": statistics.median(s_cores), "p_cores": statistics.median(p_cores),
            "cpu_ratio": statistics.median(p * d / (s * c) for s, c, p, d
                                           in zip(s_times, s_cores, p_times, p_cores))}


def cheap_batch(batch: int) -> Rollouts:
    rows = load_rows("builtin:arithmetic", "train").select(range(batch))
    texts = [r["demonstration"] if i % 4 else r["demonstration"] + "1" for i, r in enumerate(rows)]
    return rollouts(texts, [{"answer": r["answer"]} for r in rows])


def bench_cheap(ns: argparse.Namespace) -> dict:
    term = RewardTerm("accuracy")
    fn = load_term(term)
    ro = cheap_batch(ns.cheap_batch)
    calls = [(ro.response_text[b], ro.row(b)) for b in range(len(ro))]

    def loop() -> list:
        return [fn(c, prompt=row.text, **row.fields) for c, row in calls]

    auto = RewardService([term], num_workers=2)
    forced = RewardService([term], num_workers=2, inline_max_s=0.0)
    try:
        for _ in range(3):  # start-up, then the cost estimate that picks the inline path
            loop(), auto.score(ro), forced.score(ro)
        times: dict[str, list[float]] = {"loop": [], "auto": [], "pool": []}
        for _ in range(ns.cheap_repeats):
            times["loop"].append(timed(loop))
            times["auto"].append(timed(lambda: auto.score(ro)))
            times["pool"].append(timed(lambda: forced.score(ro)))
        inline = auto._cost is not None and auto._inline_ok \
            and auto._cost * len(ro) <= auto.inline_max_s
    finally:
        auto.close(), forced.close()
    out = {k: statistics.median(v) for k, v in times.items()}
    out["inline"] = inline
    return out


def table(h: dict, c: dict, ns: argparse.Namespace) -> str:
    step = ns.step_s
    loop = c["loop"]
    lines = [
        "| figure | measured | goal |",
        "| --- | --- | --- |",
        f"| (a) heavy reward, {ns.heavy_batch} samples, serial in-process | "
        f"{h['serial']:.3f} s/batch ({h['per_ms']:.1f} ms/sample), got "
        f"{h['s_cores']:.2f} cores | |",
        f"| (a) heavy reward, RewardService(num_workers=2) | {h['pool']:.3f} s/batch, "
        f"reward processes + this one got {h['p_cores']:.2f} cores | |",
        f"| (a) speed-up, median of {ns.repeats} (per-repeat range "
        f"{h['ratios'][0]:.2f}-{h['ratios'][-1]:.2f}) | **{h['speedup']:.2f}x** | >= 1.8x |",
        f"| (a) CPU seconds, pool / serial (extra work the pool adds; contention-free) | "
        f"{h['cpu_ratio']:.3f} | |",
        f"| (b) accuracy, batch {ns.cheap_batch}, bare function loop | "
        f"{loop * 1e3:.1f} ms/batch | |",
    ]
    for key, name in (("auto", f"service ({'inline' if c['inline'] else 'pool'} path, "
                               f"as in training)"), ("pool", "service forced onto the pool")):
        over = c[key] - loop
        lines.append(f"| (b) {name} | {c[key] * 1e3:.1f} ms/batch: x{c[key] / loop:.2f} raw, "
                     f"overhead {over * 1e3:+.1f} ms = **{over / step:+.3%}** of a {step:.0f} s "
                     f"step | <= 5% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of (a)")
    ap.add_argument("--heavy-ms", type=float, default=30.0, help="target ms per heavy call")
    ap.add_argument("--heavy-batch", type=int, default=96)
    ap.add_argument("--cheap-batch", type=int, default=64)
    ap.add_argument("--cheap-repeats", type=int, default=20, help="timed repeats of (b)")
    ap.add_argument("--step-s", type=float, default=30.0, help="training step the overhead "
                    "is compared with")
    ap.add_argument("--small", action="store_true", help="smoke run: small batches, one repeat")
    ns = ap.parse_args()
    if ns.small:
        ns.repeats, ns.heavy_ms, ns.heavy_batch, ns.cheap_batch, ns.cheap_repeats = 1, 2.0, 8, 8, 1
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heavy_reward.py"
        path.write_text(HEAVY_FILE)
        heavy = bench_heavy(ns, str(path))
    cheap = bench_cheap(ns)
    print(f"\n{os.cpu_count()} CPUs; load average before {load[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f}\n")
    print(table(heavy, cheap, ns))


if __name__ == "__main__":
    main()
