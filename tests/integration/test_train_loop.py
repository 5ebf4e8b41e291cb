"""The whole loop on a local Ray cluster with a tiny random model."""

import logging
from pathlib import Path

import ray
import torch
from loop_helpers import learner_weights, ray_per_module  # noqa: F401 (autouse fixture)

from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.workers.placement import allocator_env

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"


def _cfg(tmp_path, model_path, steps=4, extra=()):
    return load_config(None, [
        f"model.name={model_path}", "rollout.engine=hf", "rollout.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=1", f"train.steps={steps}", "train.lr=1.0e-3",
        "checkpoint.every=2", "checkpoint.keep=3", f"logging.run_dir={tmp_path}",
        "logging.run_name=loop", "logging.loggers=[jsonl]", "ray.num_cpus=2", *extra,
    ])


def _malloc(handle) -> str:
    maps = ray.get(handle.__ray_call__.remote(lambda _: Path("/proc/self/maps").read_text()))
    return "tcmalloc" if "libtcmalloc" in maps else "glibc"


def test_loop_trains_checkpoints_and_resumes_bit_identically(tmp_path, tiny_model_path, caplog):
    # A weight-0 json_structure term (rewards unchanged) reads a `schema` that the
    # arithmetic rows lack: the loop says so once, before the workers start.
    cfg = _cfg(tmp_path, tiny_model_path, extra=(
        f"reward.terms=[{{name: '{REWARD}'}}, {{name: json_structure, weight: 0.0}}]",))
    with caplog.at_level(logging.WARNING, logger="rlft"):
        full = TrainingLoop(cfg)
    assert caplog.text.count("reads row field 'schema', which no row has") == 1
    # ray.cpu_allocator=auto: the learner and rollout processes run on tcmalloc
    # where it is installed; the reward service keeps glibc.
    want = "tcmalloc" if allocator_env("auto") else "glibc"
    pools = full.pools
    assert [_malloc(pools.learners[0]), _malloc(pools.rollout[0])] == [want, want]
    assert _malloc(pools.reward) == "glibc"
    before = learner_weights(full)
    history = full.train()
    after = learner_weights(full)
    full.close()

    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.policy_version for m in history] == [0, 1, 2, 3]  # rollouts of step k: weights k
    assert all(m.reward_failures.total == 0 for m in history)
    assert any(m.reward_std > 0 for m in history)  # the reward service really scored
    assert any(not torch.equal(before[k], after[k]) for k in before)  # weights moved
    ckpts = sorted(p.name for p in (tmp_path / "loop" / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]
    lines = (tmp_path / "loop" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4

    # Interrupted run: stop after step 2 (its checkpoint), then --resume auto. It syncs
    # through the Ray object store, the run above by gloo broadcast (auto on CPU): the
    # two transports must deliver the same weights, bit for bit.
    cfg2 = _cfg(tmp_path / "b", tiny_model_path, extra=("rollout.weight_transport=ray",))
    first = TrainingLoop(cfg2)
    for _ in range(2):
        first.train_step()
    first.save()
    first.close()
    resumed = TrainingLoop(cfg2, resume="auto")
    assert resumed.step == 2 and resumed.version == 2
    tail = resumed.train()
    final = learner_weights(resumed)
    resumed.close()

    assert [m.reward_mean for m in tail] == [m.reward_mean for m in history[2:]]
    for name, tensor in after.items():
        assert torch.equal(tensor, final[name]), f"{name} differs after resume"
