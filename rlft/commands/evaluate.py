"""Evaluation on the held-out split: pass@k and mean reward.

`rlft eval CONFIG|RUN_DIR` runs it in this process (no Ray): one rollout worker
and the run's own reward terms. The training loop runs the same `evaluate` every
`train.eval_every` steps on the rollout workers it already has.

Decisions:
- Samples are drawn with the run's sampling settings (rollout.temperature,
  top_p, max_new_tokens, stop): pass@k measures sampling, so it is not greedy.
  n = max(k, rollout.n) samples per prompt; k defaults to rollout.n.
- A sample is correct when its total reward (the weighted sum of the terms,
  the fallback where a call failed) is >= `train.eval_threshold`, default 0.5:
  a 0/1 accuracy reward counts its ones; a shaped reward needs its own value.
- pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k)
  per prompt with c correct of n, averaged over prompts; pass@1 is then the
  mean fraction correct.
- Prompts are the first `limit` of the split in dataset order, and batch i is
  sampled with seed `EVAL_SEED + train.seed + i`, so evaluating the same
  weights twice gives the same figures and evaluations across steps compare.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from rlft.commands.export import export_checkpoint, newest_checkpoint, run_config
from rlft.config import Config, load_config
from rlft.models import resolve_model
from rlft.run.preflight import check_run
from rlft.run.turn_settings import env_settings, tool_settings
from rlft.run.wiring import build_prompts_for, engine_name, reward_terms, sampling_params
from rlft.types import Prompt, PromptBatch, Rollouts, ScoredRollouts
from rlft.workers.reward import RewardService
from rlft.workers.rollout import RolloutWorker, SamplingParams

EVAL_SEED = 7_777_777  # keeps eval samples off the training stream (seed * 1_000_003 + step)

Generate = Callable[[PromptBatch, SamplingParams], Rollouts]
Score = Callable[[Rollouts], ScoredRollouts]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt: c of n samples correct.

    >>> pass_at_k(4, 1, 2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    >>> pass_at_k(4, 0, 2), pass_at_k(4, 3, 2), pass_at_k(5, 2, 1)
    (0.0, 1.0, 0.4)
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, one rounding


def summarize(group_id: Sequence[int], rewards: Sequence[float], k: int, threshold: float
              ) -> dict[str, float]:
    """reward mean/std over samples; pass@1 and pass@k averaged over groups (prompts)."""
    if not rewards:
        raise ValueError("summarize needs at least one sample")
    per_group: dict[int, list[bool]] = defaultdict(list)
    for g, r in zip(group_id, rewards, strict=True):
        per_group[g].append(r >= threshold)
    mean = math.fsum(rewards) / len(rewards)
    var = math.fsum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1)
    out = {"reward_mean": mean, "reward_std": math.sqrt(var)}
    for kk in sorted({1, k}):
        out[f"pass@{kk}"] = math.fsum(pass_at_k(len(v), sum(v), kk)
                                      for v in per_group.values()) / len(per_group)
    return out


@dataclass(frozen=True)
class EvalSpec:
    n: int  # samples per prompt
    k: int
    threshold: float
    params: SamplingParams  # its seed is the first batch's; batch i adds i
    batch_prompts: int  # prompts per generate call


def spec_from(cfg: Config, k: int | None = None) -> EvalSpec:
    k = cfg.rollout.n if k is None else k
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    return EvalSpec(n=max(k, cfg.rollout.n), k=k, threshold=cfg.train.eval_threshold,
                    params=sampling_params(cfg, seed=EVAL_SEED + cfg.train.seed),
                    batch_prompts=cfg.rollout.prompts_per_step)


def evaluate(prompts: Sequence[Prompt], generate: Generate, score: Score, spec: EvalSpec,
             progress: bool = False) -> dict[str, float]:
    """Sample, score and summarise `prompts`, `spec.batch_prompts` at a time."""
    if not prompts:
        raise ValueError("evaluate got no prompts; check data.eval_split and --limit")
    gids: list[int] = []
    rewards: list[float] = []
    lengths: list[int] = []
    truncated = failures = 0
    comps: dict[str, list[float]] = defaultdict(list)
    bar = tqdm(total=len(prompts), desc="eval", unit="prompt", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for i, start in enumerate(range(0, len(prompts), spec.batch_prompts)):
        chunk = list(prompts[start:start + spec.batch_prompts])
        seed = None if spec.params.seed is None else spec.params.seed + i
        scored = score(generate(PromptBatch.plain(chunk, spec.n, first_group=start),
                                replace(spec.params, seed=seed)))
        ro = scored.rollouts
        gids += ro.group_id
        rewards += scored.rewards.tolist()
        lengths += [len(r) for r in ro.response_ids]
        truncated += sum(f == "length" for f in ro.finish_reason)
        failures += scored.failures.total
        for name, values in scored.components.items():
            comps[name] += [v for v in values.tolist() if not math.isnan(v)]
        bar.update(len(chunk))
    bar.close()
    out = summarize(gids, rewards, spec.k, spec.threshold)
    out.update({"response_len_mean": sum(lengths) / len(lengths),
                "truncated_frac": truncated / len(lengths), "reward_failures": float(failures)})
    out.update({f"reward/{k}": math.fsum(v) / len(v) for k, v in comps.items() if v})
    return out


def write_report(out_dir: Path, metrics: dict[str, float], settings: dict) -> Path:
    """`eval.json` ({metrics, settings}) and `eval.md` (a metric | value table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"metrics": metrics, "settings": settings},
                                                  indent=1) + "\n")
    lines = ["# rlft eval", "", ", ".join(f"{k}: {v}" for k, v in settings.items()), "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    (out_dir / "eval.md").write_text("\n".join(lines) + "\n")
    return out_dir / "eval.json"


# -- the `rlft eval` command ----------------------------------------------------

def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlft eval", description="pass@k and mean reward on "
                                "data.eval_split, in this process (no Ray).")
    p.add_argument("items", nargs="*", help="CONFIG.yaml or RUN_DIR (its config.yaml and newest "
                   "checkpoint), then key.sub=value overrides")
    p.add_argument("--k", type=int, default=None, help="pass@k's k (default rollout.n); "
                   "max(k, rollout.n) samples per prompt")
    p.add_argument("--limit", type=int, default=None, help="only the first N eval prompts")
    p.add_argument("--out", default=None, help="folder for eval.json and eval.md (default: the "
                   "run folder; for a config, <logging.run_dir>/eval-<time>)")
    ns = p.parse_intermixed_args(args)  # overrides may follow the options
    target = ns.items[0] if ns.items and "=" not in ns.items[0] else None
    overrides = ns.items[1:] if target else ns.items
    if target and Path(target).is_dir():
        path = run_eval(Path(target), overrides, ns.k, ns.limit, ns.out)
    else:
        cfg = load_config(target, overrides)
        check_run(cfg, [cfg.data.eval_split])  # one line and exit 2 on bad input
        out = ns.out or Path(cfg.logging.run_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
        path = eval_model(cfg, None, ns.k, ns.limit, Path(out))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def run_eval(run_dir: Path, overrides: Sequence[str], k: int | None, limit: int | None,
             out: str | None) -> Path:
    """Evaluate a run's newest complete checkpoint (exported to a temporary folder)."""
    cfg = run_config(run_dir, overrides)
    check_run(cfg, [cfg.data.eval_split])
    ckpt = newest_checkpoint(run_dir)
    with tempfile.TemporaryDirectory(prefix="rlft-eval-") as tmp:
        export_checkpoint(cfg, ckpt, Path(tmp))
        return eval_model(cfg, (tmp, ckpt), k, limit, Path(out or run_dir))


def eval_model(cfg: Config, weights: tuple[str, Path] | None, k: int | None, limit: int | None,
               out: Path) -> Path:
    """Evaluate cfg.model.name, or `weights` = (exported folder, its checkpoint)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    spec = spec_from(cfg, k)
    prompts = build_prompts_for(cfg, cfg.data.eval_split)[0].prompts[:limit]
    model_path = weights[0] if weights else resolve_model(cfg.model.name)
    print(f"evaluating {weights[1] if weights else model_path} on {cfg.data.source} "
          f"[{cfg.data.eval_split}]: {len(prompts)} prompts x {spec.n} samples", file=sys.stderr)
    worker = RolloutWorker(engine=engine_name(cfg), model_path=model_path, seed=cfg.train.seed,
                           tools=tool_settings(cfg) if cfg.rollout.tools else None,  # multi-turn
                           environment=env_settings(cfg) if cfg.rollout.env else None)
    r = cfg.reward
    terms = reward_terms(cfg)  # as training builds them (state_match on the run's environment)
    with RewardService(terms, num_workers=r.num_workers, timeout_s=r.timeout_s,
                       fallback=r.fallback, max_failure_frac=r.max_failure_frac) as service:
        metrics = evaluate(prompts, worker.generate, service.score, spec, progress=True)
    settings = {"model": cfg.model.name, "checkpoint": str(weights[1]) if weights else None,
                "data": cfg.data.source, "split": cfg.data.eval_split, "prompts": len(prompts),
                "samples_per_prompt": spec.n, "k": spec.k, "threshold": spec.threshold,
                "temperature": spec.params.temperature}
    return write_report(out, metrics, settings)
