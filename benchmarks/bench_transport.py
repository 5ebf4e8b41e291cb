"""Weight sync into the running rollout engine: Ray object store vs broadcast.

    .venv/bin/python benchmarks/bench_transport.py [--repeat 5] [--small] [key=value ...]

The default config (SmolLM2-135M-Instruct, vLLM engine where it imports), one
`TrainingLoop` per `rollout.weight_transport` (ray, then broadcast: gloo on CPU,
NCCL on GPUs), each timing `--repeat` full syncs after one training step (its
sync is the warm-up); the engine's log-probs of a batch sampled afterwards are
compared with the learner's (max difference printed: ~1e-5 = same weights). Prints the median seconds per sync and broadcast / ray.

--small: a smoke run (tiny-random model, transformers engine, 2 prompts x 2
samples, one timed sync); its figures mean little.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import ray

from rlft.batch.collate import collate
from rlft.config import load_config
from rlft.loop import TrainingLoop

SMALL = ["model.name=tiny-random", "rollout.engine=hf", "rollout.prompts_per_step=2",
         "rollout.n=2", "rollout.max_new_tokens=8", "reward.num_workers=0", "ray.num_cpus=2"]


def measure(overrides: list[str], transport: str, repeat: int) -> tuple[list[float], float]:
    """Seconds of each sync, and max |engine - learner| log-prob on a fresh batch."""
    cfg = load_config(None, ["logging.run_dir=runs/bench", "logging.loggers=[jsonl]",
                             f"rollout.weight_transport={transport}", *overrides])
    trainer = TrainingLoop(cfg)
    try:
        trainer.train_step()  # moves the weights (so the check below means something), and
        # warms up: the step's own sync makes the first-use allocations on both sides
        times = []
        for _ in range(repeat):
            trainer.version += 1
            start = time.perf_counter()
            trainer.sync_weights()
            times.append(time.perf_counter() - start)
        prompts = trainer.algo.make_batch(trainer.sampler.next_batch(), 0, cfg.rollout.n)
        scored = trainer.score(trainer.generate(prompts, 0))
        batch, _ = collate(scored, trainer.pad_id)
        learner = ray.get(trainer.pools.learners[0].compute_logprobs.remote(batch))[0]
        diff = float((batch.rollout_logprobs - learner).abs()[batch.response_mask].max())
        if scored.rollouts.policy_version != trainer.version:
            raise RuntimeError(f"{transport}: engine at version {scored.rollouts.policy_version}, "
                               f"expected {trainer.version}")
    finally:
        trainer.close()
        ray.shutdown()
    return times, diff


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--small", action="store_true", help="smoke run: tiny model, one sync")
    p.add_argument("overrides", nargs="*", help="key.sub=value, applied to both runs")
    ns = p.parse_args(argv)
    if ns.small:
        ns.repeat, ns.overrides = 1, [*SMALL, *ns.overrides]
    rows = {}
    for transport in ("ray", "broadcast"):
        times, diff = measure(ns.overrides, transport, ns.repeat)
        rows[transport] = statistics.median(times)
        print(f"{transport}: syncs {', '.join(f'{t:.2f}' for t in times)} s; engine vs learner "
              f"log-prob max diff {diff:.1e}", file=sys.stderr)
    print("| transport | median s per sync |\n|---|---|")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.2f} |")
    print(f"broadcast / ray: {rows['broadcast'] / rows['ray']:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
