"""GRPO vs CHORD vs Prefix-RFT on one task: same model, steps, seeds and data.

    .venv/bin/python benchmarks/compare_algos.py [--algos grpo,chord,prefix_rft]
        [--steps 16] [--eval-prompts 32] [--out runs/compare] [--small] [key=value ...]

Defaults: builtin:arithmetic with smollm2-135m-instruct and each algorithm's
defaults (`key=value` overrides apply to every run, e.g. model.name=tiny-random
for a smoke run). Every run starts from the same weights with the same
train.seed, so the prompts and the first step's samples match. For each
algorithm, on the trained weights (the run's own rollout workers):

- train reward: mean of the first and of the last k = min(5, steps // 2) steps
  (Prefix-RFT's includes its prefixed samples, which see part of the answer:
  compare the held-out figures);
- held-out: `rlft.evaluate.evaluate` on data.eval_split (mean reward, pass@1);
- forgetting probe: the same on builtin:json_extract's eval split scored by
  `json_structure`, next to the base model's figure (a drop = forgetting).

Prints a markdown table and writes <out>/compare.json. --small is a smoke run
(tiny-random, transformers engine, 1 step of 2 prompts x 2 samples, 2
held-out prompts); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rlft.commands.evaluate import evaluate, spec_from
from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.rewards.base import RewardTerm
from rlft.run.wiring import build_prompts_for
from rlft.workers.reward import RewardService

PROBE = ["data.source=builtin:json_extract"]
SMALL = ["model.name=tiny-random", "rollout.engine=hf", "rollout.prompts_per_step=2",
         "rollout.n=2", "rollout.max_new_tokens=8", "reward.num_workers=0", "ray.num_cpus=2"]


def held_out(trainer: TrainingLoop, prompts, probe_prompts, probe_service) -> dict[str, float]:
    """Held-out and probe figures for the trainer's current weights."""
    spec = spec_from(trainer.cfg)

    def gen(batch, params):
        return trainer.generate(batch, trainer.step, params)

    main = evaluate(prompts, gen, trainer.score, spec)
    probe = evaluate(probe_prompts, gen, probe_service.score, spec)
    return {"eval_reward": main["reward_mean"], "eval_pass@1": main["pass@1"],
            "probe_reward": probe["reward_mean"]}


def run(algo: str, overrides: list[str], steps: int, limit: int, out: Path,
        probe_service: RewardService, base: dict | None) -> tuple[dict, dict | None]:
    cfg = load_config(None, [*overrides, f"algo.name={algo}", f"train.steps={steps}",
                             f"logging.run_dir={out}", f"logging.run_name={algo}",
                             "logging.loggers=[jsonl]", "checkpoint.every=0"])
    prompts = build_prompts_for(cfg, cfg.data.eval_split)[0].prompts[:limit]
    probe_cfg = load_config(None, [*overrides, *PROBE])
    probe_prompts = build_prompts_for(probe_cfg, probe_cfg.data.eval_split)[0].prompts[:limit]
    trainer = TrainingLoop(cfg)
    try:
        if base is None:  # every run starts from these weights: measure them once
            base = held_out(trainer, prompts, probe_prompts, probe_service)
        t0 = time.perf_counter()
        history = trainer.train()
        seconds = time.perf_counter() - t0
        after = held_out(trainer, prompts, probe_prompts, probe_service)
    finally:
        trainer.close()
    rewards = [m.reward_mean for m in history]
    k = max(1, min(5, len(rewards) // 2))
    row = {"algo": algo, "train_first": sum(rewards[:k]) / k, "train_last": sum(rewards[-k:]) / k,
           **after, "probe_drop": base["probe_reward"] - after["probe_reward"],
           "train_s": seconds}
    return row, base


def table(rows: list[dict], base: dict) -> str:
    cols = ["algo", "train_first", "train_last", "eval_reward", "eval_pass@1", "probe_reward",
            "probe_drop", "train_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines.append("| base | - | - | " + " | ".join(
        f"{base[c]:.3f}" for c in ("eval_reward", "eval_pass@1", "probe_reward")) + " | - | - |")
    for r in rows:
        lines.append("| " + " | ".join(r[c] if c == "algo" else f"{r[c]:.3f}" for c in cols)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default="grpo,chord,prefix_rft")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--small", action="store_true", help="smoke run: tiny model, 1 step")
    p.add_argument("overrides", nargs="*", help="key.sub=value, applied to every run")
    ns = p.parse_args(argv)
    if ns.small:
        ns.steps, ns.eval_prompts, ns.overrides = 1, 2, [*SMALL, *ns.overrides]
    out = Path(ns.out) / time.strftime("%Y%m%d-%H%M%S")
    rows, base = [], None
    with RewardService([RewardTerm("json_structure", 1.0, {})], num_workers=0) as probe:
        for algo in ns.algos.split(","):
            row, base = run(algo, ns.overrides, ns.steps, ns.eval_prompts, out, probe, base)
            rows.append(row)
            print(f"{algo}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "algo"),
                  file=sys.stderr)
    print(table(rows, base))
    (out / "compare.json").write_text(json.dumps({"base": base, "runs": rows,
                                                  "overrides": ns.overrides}, indent=1) + "\n")
    print(f"wrote {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
