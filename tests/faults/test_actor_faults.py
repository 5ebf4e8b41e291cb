"""Actors killed mid-step (SIGKILL of the actor's process).

Rollout worker and reward service: Ray restarts them (ray.max_restarts) and
retries the call in flight (ray.max_task_retries); the training loop re-sends the
weights to a restarted rollout worker. Generation is seeded per step, so the
run ends with exactly the weights of a run without faults. Learner: never
restarted (its state lives in the last checkpoint); the run exits non-zero and
says to continue with `--resume auto`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import ray
import torch
from fault_harness import KillWhen, actor_pid, learner_once_logged, when_busy
from ray._private import state

from rlft import cli
from rlft.config import load_config
from rlft.loop import TrainingLoop

REWARD = f"{Path(__file__).with_name('fault_rewards.py')}:flagged_chars"


def _overrides(tmp_path: Path, model: str, name: str, steps: int = 3) -> list[str]:
    flag = tmp_path / f"{name}.scoring"
    return [
        f"model.name={model}", "rollout.engine=hf", "rollout.prompts_per_step=2", "rollout.n=2",
        "rollout.max_new_tokens=64", "reward.num_workers=0",
        f"reward.terms=[{{name: '{REWARD}', kwargs: {{flag: '{flag}', delay: 0.2}}}}]",
        f"train.steps={steps}", "train.lr=1.0e-3", f"logging.run_dir={tmp_path}",
        f"logging.run_name={name}", "logging.loggers=[jsonl]", "ray.num_cpus=2",
        "ray.max_restarts=2", "ray.max_task_retries=2",
    ]


def _weights(trainer: TrainingLoop) -> dict[str, torch.Tensor]:
    return ray.get([lrn.full_state.remote() for lrn in trainer.pools.learners])[0]


@pytest.fixture(scope="module", autouse=True)
def _ray():
    yield
    ray.shutdown()


def test_rollout_and_reward_actors_killed_mid_step_restart_and_change_nothing(
        tmp_path, tiny_model_path, caplog):
    ref = TrainingLoop(load_config(None, _overrides(tmp_path, tiny_model_path, "ref")))
    want_hist = [ref.train_step() for _ in range(3)]
    want = _weights(ref)
    ref.close()

    trainer = TrainingLoop(load_config(None, _overrides(tmp_path, tiny_model_path, "faulted")))
    hist = [trainer.train_step()]
    # Step 1: the rollout worker dies while it generates (its CPU time starts to climb).
    pid = actor_pid(trainer.pools.rollout[0])
    killer = KillWhen(when_busy(pid))
    with caplog.at_level(logging.WARNING, logger="rlft"):
        hist.append(trainer.train_step())
    assert killer.fired and actor_pid(trainer.pools.rollout[0]) != pid
    assert "re-sending the weights" in caplog.text  # the restarted worker had version 0
    # Step 2: the reward service dies while it scores (the reward touched its flag).
    flag = tmp_path / "faulted.scoring"
    flag.unlink()
    pid = actor_pid(trainer.pools.reward)
    killer = KillWhen(lambda: pid if flag.exists() else None)
    hist.append(trainer.train_step())
    assert killer.fired and actor_pid(trainer.pools.reward) != pid
    got = _weights(trainer)
    trainer.close()

    assert [m.reward_mean for m in hist] == [m.reward_mean for m in want_hist]
    assert [m.loss for m in hist] == [m.loss for m in want_hist]
    assert all(torch.equal(got[k], want[k]) for k in want), "weights differ from the clean run"


def test_learner_killed_exits_nonzero_pointing_at_resume_auto(tmp_path, tiny_model_path, capsys):
    metrics = tmp_path / "learner" / "metrics.jsonl"
    found: dict = {}
    killer = KillWhen(learner_once_logged(metrics, 1, found), timeout=300)
    code = cli.main(["train", *_overrides(tmp_path, tiny_model_path, "learner", steps=200)])
    err = capsys.readouterr().err
    assert killer.fired
    assert code == 1
    assert "A worker died" in err and "--resume auto" in err
    dead = state.actors(found["ActorID"])
    assert dead["State"] == "DEAD" and dead["NumRestarts"] == 0  # learners are never restarted
    assert len(metrics.read_text().splitlines()) < 200
