"""Synchronous vs asynchronous (train.max_staleness=1) training, each role on its own core.

    python benchmarks/bench_async.py [--steps 8] [--warmup 2] [--model tiny-random]
                                     [--prompts 4] [--n 8] [--max-new-tokens 24]
                                     [--set train.epochs=2 ...] [--small]

--small is a smoke run (1 timed step after none, 2 prompts x 2 samples, 4 new
tokens); its figures mean little.

On a cluster the rollout workers and the learner own their GPUs; here the
rollout worker's process is pinned to core 0 and the learner's to core 1, each
with one torch thread (the driver and the reward actor are not pinned; their
work is small). Both loops run in this one process, one after the other, with
the same config and seed. Printed per loop: steps/s over `--steps` steps after
`--warmup`, the mean rollout time R (generation, per step) and learner time U
(advantage passes + update), the weight sync S, and the share of each step's
wall time each role had no work (async/rollout_idle_frac,
async/learner_idle_frac). Then the speed-up and its ceiling: with sync, a
step takes about R + U + S; with one batch sampled ahead, max(R, U) + S, so
the ratio is at most 1 + min(R, U) / max(R, U) (S ignored), with R and U
measured in the synchronous loop. Pick a configuration where R and U are
comparable (--max-new-tokens moves R, --prompts x --n moves both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from rlft.config import load_config  # noqa: E402
from rlft.loop import TrainingLoop  # noqa: E402


def pin(handle, core: int) -> int:
    """Every thread of the actor's process onto `core`, one torch thread; returns its pid."""
    def inside(_self, core=core):
        import torch

        torch.set_num_threads(1)
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), {core})
        return os.getpid()
    return ray.get(handle.__ray_call__.remote(inside))


def run(args, k: int, work: Path) -> dict:
    overrides = [f"model.name={args.model}", "rollout.engine=hf",
                 f"rollout.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "reward.num_workers=0",
                 # Two spare steps: the last step of a run samples nothing ahead (and
                 # would look fast), so the timed window ends before it.
                 f"train.steps={args.warmup + args.steps + 2}", f"train.seed={args.seed}",
                 "algo.rollout_is.mode=tis", f"train.max_staleness={k}",
                 f"logging.run_dir={work}", f"logging.run_name=k{k}", "logging.loggers=[jsonl]",
                 "ray.num_cpus=2", *args.set]
    loop = TrainingLoop(load_config(None, overrides))
    try:
        pin(loop.pools.rollout[0], 0)
        for lrn in loop.pools.learners:
            pin(lrn, 1)
        history = [loop.train_step() for _ in range(args.warmup)]
        start = time.perf_counter()
        timed = [loop.train_step() for _ in range(args.steps)]
        wall = time.perf_counter() - start
    finally:
        loop.close()
    flat = [m.flat() for m in timed]

    def mean(key: str) -> float:
        return statistics.fmean(f.get(key, 0.0) for f in flat)
    return {"k": k, "steps_per_s": args.steps / wall, "R": mean("time/rollout"),
            "U": mean("time/advantage") + mean("time/update"), "S": mean("time/sync"),
            "rollout_idle": mean("async/rollout_idle_frac"),
            "learner_idle": mean("async/learner_idle_frac"),
            "staleness": mean("async/staleness_mean"),
            "reward": [round(m.reward_mean, 3) for m in history + timed]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    # Two PPO epochs make the update as long as the rollout here (R ~ U ~ 2.2 s).
    p.add_argument("--set", nargs="*", default=["train.epochs=2"],
                   help="more key=value overrides (default: train.epochs=2)")
    p.add_argument("--small", action="store_true", help="smoke run: one tiny timed step")
    args = p.parse_args()
    if args.small:
        args.steps, args.warmup, args.prompts, args.n, args.max_new_tokens = 1, 0, 2, 2, 4
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_async needs 2 cores (one per role)")
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        rows = [run(args, k, Path(work)) for k in (0, 1)]
    ray.shutdown()
    sync, ahead = rows
    print(f"\nmodel {args.model}, {args.prompts} prompts x {args.n} samples, "
          f"{args.max_new_tokens} new tokens; {args.steps} timed steps after {args.warmup}")
    print("| loop | steps/s | R rollout s | U learner s | S sync s | rollout idle | "
          "learner idle | staleness |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        label = "sync (K=0)" if r["k"] == 0 else f"async K={r['k']}"
        print(f"| {label} | "
              f"{r['steps_per_s']:.3f} | {r['R']:.2f} | {r['U']:.2f} | {r['S']:.2f} | "
              f"{r['rollout_idle']:.2f} | {r['learner_idle']:.2f} | {r['staleness']:.2f} |")
    ratio = ahead["steps_per_s"] / sync["steps_per_s"]
    ceiling = 1 + min(sync["R"], sync["U"]) / max(sync["R"], sync["U"])
    print(f"\nspeed-up K=1 / sync: {ratio:.2f}x  (ceiling 1 + min(R, U) / max(R, U) = "
          f"{ceiling:.2f}x with R={sync['R']:.2f} s, U={sync['U']:.2f} s)")
    print(f"rewards sync: {sync['reward']}\nrewards K=1:  {ahead['reward']}")
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
