"""`rlft sft CONFIG [key.sub=value ...]`: supervised fine-tuning on demonstrations.

Plain SFT of `model.name` on the rows' `demonstration` field (prompt tokens
masked out: only the demonstration and its EOS carry loss; of a multi-turn
`demonstration_turns`, only the model's turns, not tool results or template
glue), with the policy `Learner` in this process (a world of one) and its `sft_ce` loss term, then a
Hugging Face folder (`Learner.export_hf` + the tokenizer). Settings: `sft.*`
(steps, batch size, lr, output folder), the rest from `model.*`, `data.*` and
`train.*` (seed, micro-batch budget, grad clipping, LoRA via model.lora).

Self-Rewarding PPO runs this as its first stage (`ensure_sft`) when it is given
no SFT model.
The folder appears under its final name only when complete (written to a
temporary sibling, then renamed), so a crash never leaves half a model there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlft.algos.contract import LossTermSpec
from rlft.batch.collate import collate, demonstration_rollouts
from rlft.types import Prompt, ScoredRollouts, TrainBatch

log = logging.getLogger("rlft.sft")

# Mean negative log-likelihood per demonstration token (demonstration rows only).
SFT_TERMS = (LossTermSpec("sft_ce", 1.0, rows="expert", agg="token_mean"),)
SUMMARY = "rlft_sft.json"


@dataclass(frozen=True)
class SFTResult:
    path: Path  # the Hugging Face folder
    losses: list[float]  # training loss of each step (its own batch)
    eval_before: float  # mean NLL per token on a fixed set of demonstrations, before training
    eval_after: float  # the same, after


def demonstration_batch(prompts: list[Prompt], tokenizer: Any, pad_id: int) -> TrainBatch:
    """Prompt + demonstration (+ EOS) rows; loss only on the demonstration's model tokens
    (a multi-turn one's tool results and template glue are masked)."""
    from rlft.data.demonstrations import demonstration_tokens

    tokens = [demonstration_tokens(p, tokenizer) for p in prompts]
    ro = demonstration_rollouts(prompts, [t.ids for t in tokens],
                                [p.demonstration for p in prompts], [t.model_mask for t in tokens])
    batch, _ = collate(ScoredRollouts(ro, torch.zeros(len(prompts)), {}), pad_id)
    return batch


def mean_nll(learner: Any, batch: TrainBatch) -> float:
    lp, _ = learner.compute_logprobs(batch)  # [B, L], 0 off the response
    return float(-lp[batch.response_mask].mean())


def run_sft(cfg: Any, out: Path | str) -> SFTResult:
    """Fine-tune `cfg.model.name` for `cfg.sft.steps` steps and write the folder `out`."""
    from rlft.models import load_tokenizer, resolve_model
    from rlft.run.wiring import build_prompts_for, learner_params
    from rlft.workers.learner import Learner

    s, out = cfg.sft, Path(out)
    if out.exists():
        raise FileExistsError(f"SFT output folder {out} exists; choose another (sft.out=...) or "
                              f"remove it")
    # The prompt sampler draws sft.batch_size rows per step (seeded by train.seed).
    sampler, pad_id = build_prompts_for(dataclasses.replace(
        cfg, rollout=dataclasses.replace(cfg.rollout, prompts_per_step=s.batch_size)))
    tok = load_tokenizer(cfg.model.name)
    fixed = demonstration_batch(list(sampler.prompts[:s.batch_size]), tok, pad_id)
    params = dataclasses.replace(learner_params(cfg), lr=s.lr, total_steps=s.steps,
                                 warmup_steps=0, lr_schedule="constant")
    learner = Learner(resolve_model(cfg.model.name), params)
    try:
        before = mean_nll(learner, fixed)
        losses = []
        for step in range(s.steps):
            stats = learner.update(demonstration_batch(sampler.next_batch(), tok, pad_id),
                                   SFT_TERMS)
            losses.append(stats.metrics["sft_ce/loss"])
            log.info("sft step %d/%d: loss %.4f, grad norm %.3g", step + 1, s.steps, losses[-1],
                     stats.grad_norm)
        after = mean_nll(learner, fixed)
        tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        learner.export_hf(str(tmp))
    finally:
        learner.shutdown()
    _finish(tmp, out, cfg, losses, before, after)
    log.info("sft: NLL per token on %d fixed demonstrations %.4f -> %.4f; model in %s",
             fixed.input_ids.shape[0], before, after, out)
    return SFTResult(out, losses, before, after)


def sft_ready(folder: Path) -> bool:
    """A finished SFT folder: `run_sft` renames it into place only when complete."""
    return (folder / "config.json").is_file()


def ensure_sft(cfg: Any, folder: Path) -> None:
    """The "sft" stage (rlft/run/stages.py): fine-tune into `folder` unless a
    finished model is there (a resumed run)."""
    if sft_ready(folder):
        log.info("reusing the SFT model in %s", folder)
        return
    log.info("fine-tuning %s on the demonstrations into %s first (sft.* settings)",
             cfg.model.name, folder)
    run_sft(cfg, folder)


def _finish(tmp: Path, out: Path, cfg: Any, losses: list[float], before: float,
            after: float) -> None:
    from transformers import AutoTokenizer

    from rlft.models import resolve_model

    # The base model's own tokenizer files, unchanged (not rlft's padding settings).
    AutoTokenizer.from_pretrained(resolve_model(cfg.model.name)).save_pretrained(tmp)
    summary = {"base_model": cfg.model.name, "data": cfg.data.source,
               "sft": dataclasses.asdict(cfg.sft), "losses": losses,
               "eval_nll_before": before, "eval_nll_after": after}
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)


def default_out(cfg: Any) -> Path:
    name = cfg.logging.run_name or f"sft-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.sft.out) if cfg.sft.out else Path(cfg.logging.run_dir) / name / "model"


def main(args: list[str]) -> int:
    from rlft.config import load_config
    from rlft.run.preflight import check_run

    p = argparse.ArgumentParser(prog="rlft sft", description=__doc__.split("\n\n")[1])
    p.add_argument("items", nargs="*", help="optional CONFIG.yaml, then key.sub=value overrides")
    ns = p.parse_args(args)
    path = ns.items[0] if ns.items and "=" not in ns.items[0] else None
    cfg = load_config(path, ns.items[1:] if path else ns.items)
    check_run(cfg, [cfg.data.train_split], rewards=False)  # one line and exit 2 on bad input
    result = run_sft(cfg, default_out(cfg))
    print(f"sft done: {len(result.losses)} steps, NLL per token on fixed demonstrations "
          f"{result.eval_before:.4f} -> {result.eval_after:.4f}; model folder {result.path}")
    return 0
