"""Rollout-vs-learner mismatch through the real loop on the tiny model at
rollout.temperature=0.7: the engine reports log-probs of the distribution it
sampled from, the learner scores at the same temperature, and the step's
`mismatch/*` metrics in metrics.jsonl say they agree (fp32 on CPU). Then the
counterfactual: a learner that ignored the temperature would be far off."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from loop_helpers import ray_per_module  # noqa: F401 (autouse fixture)

from rlft.batch.collate import collate
from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.types import PromptBatch
from rlft.workers.learner import Learner, LearnerParams
from rlft.workers.rollout import HFEngine, SamplingParams

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"
T = 0.7


def _run(tmp_path, model_path, engine, extra=()):
    cfg = load_config(None, [
        f"model.name={model_path}", f"rollout.engine={engine}", f"rollout.temperature={T}",
        *(["rollout.kv_cache_gb=0.25"] if engine == "vllm" else []),
        "rollout.prompts_per_step=2", "rollout.n=4",
        "rollout.max_new_tokens=12", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=0", "train.steps=2", "train.lr=1.0e-3",
        f"logging.run_dir={tmp_path}", f"logging.run_name={engine}", "logging.loggers=[jsonl]",
        "ray.num_cpus=2", *extra])
    trainer = TrainingLoop(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    path = Path(cfg.logging.run_dir) / cfg.logging.run_name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("engine", [
    "hf", pytest.param("vllm", marks=pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"))])
def test_mismatch_metrics_are_logged_and_small_at_the_sampling_temperature(
        tmp_path, tiny_model_path, engine):
    # Two updates per batch: the second step's ratio leaves 1 (TIS on, capped).
    records = _run(tmp_path, tiny_model_path, engine,
                   ["train.minibatches=2", "algo.rollout_is.mode=tis"])
    for r in records:
        diff = r["mismatch/logprob_abs_diff"]
        print(f"{engine}: mismatch/logprob_abs_diff {diff:.2e}, kl {r['mismatch/kl']:.2e}")
        assert 0 <= diff < 1e-3
        assert 0 <= r["mismatch/kl"] < 1e-5 and r["mismatch/ratio_out_frac"] == 0.0
        assert 0.999 < r["ppo_clip/is_weight"] < 1.001  # the correction ran, weights ~1


def test_a_learner_ignoring_the_temperature_would_be_off(tiny_model_path):
    """The same samples scored at T (now) and at 1 (before): the engine's
    log-probs match the first and not the second."""
    engine = HFEngine(tiny_model_path, seed=0)
    from rlft.run.wiring import build_prompts_for

    cfg = load_config(None, [f"model.name={tiny_model_path}"])
    prompts = build_prompts_for(cfg)[0].next_batch()[:4]
    rollouts = engine.generate(PromptBatch.plain(prompts, 4),
                               SamplingParams(temperature=T, max_new_tokens=12, seed=1))
    batch, _ = collate_scored(rollouts)
    diffs = {}
    for temperature in (T, 1.0):
        learner = Learner(tiny_model_path, LearnerParams(temperature=temperature))
        try:
            lp, _ = learner.compute_logprobs(batch)
        finally:
            learner.shutdown()
        mask = batch.response_mask
        diffs[temperature] = float((lp - batch.rollout_logprobs)[mask].abs().mean())
    print(f"mean |log p_rollout - log p_learner| at T={T}: learner at T {diffs[T]:.2e}, "
          f"learner at 1 {diffs[1.0]:.3f}")
    assert diffs[T] < 1e-4
    assert diffs[1.0] > 100 * max(diffs[T], 1e-6)


def collate_scored(rollouts):
    from rlft.types import ScoredRollouts

    return collate(ScoredRollouts(rollouts, torch.zeros(len(rollouts)), {}), pad_id=0)
