"""Checks the README's main-job claim: with the default config, on CPU, the
mean reward of the last 5 steps beats the first 5, within 10 minutes.

    .venv/bin/python benchmarks/default_run.py [--small] [key=value ...]

--small: a smoke run of the same loop (tiny-random model, transformers engine,
2 steps of 2 prompts x 2 samples); its figures mean nothing for the claim.

Prints first-5 / last-5 mean reward, their ratio and difference, and the wall
time (model conversion on a first run included, reported apart).
"""

from __future__ import annotations

import sys
import time

from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.models import resolve_model

SMALL = ["model.name=tiny-random", "rollout.engine=hf", "rollout.prompts_per_step=2",
         "rollout.n=2", "rollout.max_new_tokens=8", "train.steps=2", "reward.num_workers=0",
         "ray.num_cpus=2"]


def main(overrides: list[str]) -> int:
    if "--small" in overrides:
        overrides = [*SMALL, *(o for o in overrides if o != "--small")]
    cfg = load_config(None, ["logging.run_dir=runs/bench", *overrides])
    t0 = time.perf_counter()
    resolve_model(cfg.model.name)  # one-time GGUF conversion, cached
    t_model = time.perf_counter() - t0
    trainer = TrainingLoop(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    wall = time.perf_counter() - t0
    rewards = [m.reward_mean for m in history]
    k = min(5, len(rewards) // 2)
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    print("\nstep rewards: " + " ".join(f"{r:.3f}" for r in rewards))
    print(f"| figure | value |\n|---|---|\n| first-{k} mean reward | {first:.3f} |\n"
          f"| last-{k} mean reward | {last:.3f} |\n| last - first | {last - first:+.3f} |\n"
          f"| last / first | {last / max(first, 1e-9):.2f}x |\n"
          f"| wall time (s), model load {t_model:.0f}s included | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
