"""rlft across a real multi-node Ray cluster: three nodes, each in its own
network namespace with its own IP, Ray temp dir and model cache (tests/cluster/netns.py).

The learner ranks are pinned to two different nodes and the rollout worker to a
third by custom resources; `rlft train` goes in through `ray job submit`.
Across nodes this exercises the learner world's rendezvous (rank 0's node IP),
FSDP over gloo, the broadcast weight transport, per-node model materialisation
(no node shares another's cache) and checkpoints in the one shared folder. The
rollouts are stateful episodes (rollout.env=bank), so the environment
processes start on the rollout worker's node and serve two user turns. Then
the rollout worker's node is killed mid-run and a replacement node joins: the
run goes on (Ray restarts the worker there, the loop re-sends the weights) and
no step is lost.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from netns import Cluster, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))
ROOT = Path(__file__).resolve().parents[2]


def train_cmd(run_dir: Path, steps: int, *extra: str) -> str:
    args = ["launch/configs/grpo.yaml", "model.name=tiny-random", "rollout.engine=hf",
            "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=6",
            "data.source=builtin:bank", "rollout.env=bank", "rollout.max_turns=4",
            "rollout.max_total_tokens=160", "reward.terms=[{name: state_match}]",
            'rollout.stop=[" "]',  # a space ends the random model's turn: the bank answers
            f"train.steps={steps}", "train.learner_workers=2", "checkpoint.every=1",
            "checkpoint.keep=10", "reward.num_workers=1", "ray.learner_resources={learner: 1}",
            "ray.rollout_resources={rollout: 1}", "rollout.weight_transport=broadcast",
            f"logging.run_dir={run_dir}", "logging.run_name=multi", "logging.loggers=[jsonl]",
            *extra]
    quoted = " ".join(f"'{a}'" for a in args)
    return f"cd {ROOT} && HF_HUB_OFFLINE=1 rlft train {quoted}"


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def placed(logs: str) -> tuple[list[str], list[str]]:
    m = re.search(r"learner ranks on ([\d., ]+); rollout workers on ([\d., ]+)", logs)
    assert m, logs[-3000:]
    return m.group(1).split(", "), m.group(2).strip().split(", ")


def test_train_resume_and_node_fault_across_three_nodes():
    with Cluster([{"learner": 1}, {"learner": 1}, {"rollout": 1}]) as c:
        run = c.shared / "multi"
        head, worker1, worker2 = (n.ip for n in c.nodes)
        status, logs = c.submit(train_cmd(c.shared, 3), timeout_s=150)
        assert status == "SUCCEEDED", logs[-4000:]
        learners, rollout = placed(logs)
        assert sorted(learners) == sorted([head, worker1]) and rollout == [worker2], logs[-3000:]
        assert f"learner world at tcp://{head}:" in logs  # rank 0's node IP, not loopback
        first = metrics(run)
        assert [m["step"] for m in first] == [0, 1, 2]
        assert [m["policy_version"] for m in first] == [0, 1, 2]
        for m in first:  # each episode's bank ran on the rollout node; the second
            assert m["env/steps_mean"] > 1.0 and m["env/errors"] == 0.0, m  # user turn came
        assert (run / "checkpoints" / "step-000003").is_dir()
        # Each node built the model into its own cache: nothing came through a shared disk.
        for node in c.nodes:
            assert (node.cache / "models" / "tiny-random" / "config.json").is_file(), node.name

        # Resume on the cluster, and kill the rollout worker's node once a step is done.
        resume = train_cmd(c.shared, 7, "--resume", "auto", "ray.restart_timeout_s=150")
        job = c.start_job(resume)
        deadline = time.time() + 120
        while len(metrics(run)) < 4 and time.time() < deadline:
            time.sleep(1)
        assert len(metrics(run)) >= 4, c.job_logs(job)[-3000:]
        killed_after = len(metrics(run)) - 1
        c.nodes[2].stop()  # its raylet and every process in its namespace
        replacement = c.add_node({"rollout": 1})  # Ray restarts the rollout worker there
        status, logs = c.wait_job(job, timeout_s=240), c.job_logs(job)
        assert status == "SUCCEEDED", logs[-4000:]
        after = metrics(run)
        workers = (run / "logs" / "workers.log").read_text()  # the workers' output, by node
        assert (run / "checkpoints" / "step-000007").is_dir()
    # Every namespace (and with it every link and address) is gone again.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"rlft{c.tag}" not in listed, listed
    assert "resumed from" in logs and "at step 3" in logs, logs[-3000:]
    # The run went on, whichever call the kill hit: Ray's own task retries may
    # already reach the restarted worker (it answers with version 0 and gets the
    # weights), or the loop waits for the restart mid-generate or mid-sync.
    assert any(m in logs for m in ("a rollout worker was restarted; re-sending the weights",
                                   "a rollout worker is unavailable",
                                   "a rollout worker was lost during the weight sync")), \
        logs[-3000:]
    assert f"ip={replacement.ip})" in workers, workers[-3000:]  # the worker's new node
    steps = [m["step"] for m in after]
    lost = sorted(set(range(7)) - set(steps))
    print(f"\nnode fault after step {killed_after}: the run went on; steps lost {lost}")
    assert steps == list(range(7)) and not lost, steps  # every step exactly once
    assert [m["policy_version"] for m in after] == list(range(7))
