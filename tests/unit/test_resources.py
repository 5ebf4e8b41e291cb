"""A run that asks for more than the cluster holds fails in seconds, naming the
demand, what the cluster has and the setting to change (rlft/run/resources.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from rlft.algos.catalogue import build_algorithm
from rlft.config import ConfigError, load_config
from rlft.run.resources import Demand, check_fits, custom
from rlft.run.wiring import demands
from rlft.workers.placement import PlacementTimeout, gpu_bundles

GPU8 = {"CPU": 64.0, "GPU": 8.0}


def _demands(gpus: float, *overrides: str) -> list[Demand]:
    cfg = load_config(None, list(overrides))
    return demands(cfg, build_algorithm(cfg), gpus, "vllm",
                   custom(cfg.ray.learner_resources, "ray.learner_resources"),
                   custom(cfg.ray.rollout_resources, "ray.rollout_resources"))


def test_gpu_demand_counts_learners_rollout_tp_critics_and_self_reward():
    check_fits(_demands(1.0, "train.learner_workers=4", "rollout.num_workers=2",
                        "rollout.tensor_parallel_size=2"), [GPU8])  # 4 + 2 x 2 = 8
    with pytest.raises(ConfigError) as err:
        check_fits(_demands(1.0, "algo.name=ppo", "train.learner_workers=4",
                            "rollout.num_workers=2"), [GPU8])
    # 4 learner + 2 rollout + 4 critic GPUs: PPO's critics are counted.
    assert str(err.value).startswith("the run needs 10 GPU (4 learner ranks x 1 GPU + "
                                     "2 rollout workers x 1 GPU + 4 critic ranks x 1 GPU); "
                                     "the cluster has 8 GPU on 1 node(s)")
    assert "lower train.learner_workers or rollout.num_workers" in str(err.value)


def test_one_actor_must_fit_on_one_node():
    two_nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}]
    with pytest.raises(ConfigError, match=r"no node can hold one of the rollout workers "
                                          r"\(4 GPU each, from rollout.num_workers"):
        check_fits(_demands(1.0, "rollout.tensor_parallel_size=4"), two_nodes)


def test_colocated_runs_ask_only_for_the_learners_gpus():
    # Rollout workers, critics and the self-reward actor share the learners' bundles.
    one_gpu = [{"CPU": 8.0, "GPU": 1.0}]
    check_fits(_demands(1.0, "rollout.mode=colocated", "algo.name=ppo",
                        "rollout.num_workers=2"), one_gpu)
    with pytest.raises(ConfigError, match="needs 2 GPU"):
        check_fits(_demands(1.0, "rollout.mode=colocated", "train.learner_workers=2"), one_gpu)


def test_cpu_runs_count_a_core_per_busy_actor_and_custom_resources():
    check_fits(_demands(0.0, "rollout.num_workers=2", "train.learner_workers=2"), [{"CPU": 2.0}])
    with pytest.raises(ConfigError, match=r"the rollout phase runs 3 rollout workers at once.*"
                                          r"lower rollout.num_workers to at most 2"):
        check_fits(_demands(0.0, "rollout.num_workers=3"), [{"CPU": 2.0}])
    pinned = _demands(0.0, "train.learner_workers=2", "ray.learner_resources={trainer: 1}")
    with pytest.raises(ConfigError, match=r"needs 2 trainer \(2 learner ranks x 1 trainer\); "
                                          r"the cluster has 1 trainer"):
        check_fits(pinned, [{"CPU": 4.0, "trainer": 1.0}, {"CPU": 4.0}])
    check_fits(pinned, [{"CPU": 4.0, "trainer": 1.0}, {"CPU": 4.0, "trainer": 1.0}])
    with pytest.raises(ConfigError, match=r"ray.learner_resources: GPU=1 must be a custom"):
        custom({"GPU": 1}, "ray.learner_resources")


def test_placement_group_that_cannot_be_placed_times_out_with_a_message():
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        start = time.monotonic()
        with pytest.raises(PlacementTimeout, match=r"did not place 1 bundles of \{'GPU': 1\} .* "
                                                   r"in 1 s; it holds .*1 CPU.* free"):
            gpu_bundles(1, timeout_s=1.0)  # this cluster has no GPU
        assert time.monotonic() - start < 30
    finally:
        ray.shutdown()


def test_shortfall_example_exits_in_seconds_with_one_message(tmp_path):
    """The issue's example, as a user runs it: no traceback, exit status 2."""
    rlft = Path(sys.executable).parent / "rlft"
    start = time.monotonic()
    out = subprocess.run([str(rlft), "train", "rollout.num_workers=64", "ray.num_cpus=2",
                          "model.name=tiny-random", "rollout.engine=hf",
                          f"logging.run_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert ("config error: the rollout phase runs 64 rollout workers at once, one CPU core "
            "each: 64 cores, but the cluster has 2 CPU") in out.stderr, out.stderr[-2000:]
    assert took < 60, took
