"""The documented `ray job submit` recipe (launch/README.md), end to end.

A head node started with `ray start --head` on loopback, the tiny-model run
submitted with the `ray job submit` CLI (working dir = this repository, as in
the recipe), polled with the Python JobSubmissionClient until it ends. The
job's driver must join that cluster (RAY_ADDRESS), not start its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from rlft.workers.placement import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # .venv/bin: ray, rlft
# Ray 2.60 requires a token for its APIs; this cluster's own, so the test neither
# reads nor writes ~/.ray/auth_token.
TOKEN = uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `rlft` is ours
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node services on loopback
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@contextmanager
def ray_head() -> Iterator[tuple[str, int, str]]:
    """`ray start --head --block` in its own process group: stopping it ends
    exactly this cluster (never `ray stop`, which ends every Ray on the machine)."""
    gcs, dash = free_port(), free_port()
    # Ray's other fixed default ports (agent 52365, client 10001, ...) may be held by
    # another Ray on this machine: the job agent would not start and no job could run.
    ports = [f"--{name}-port={free_port()}" for name in (
        "object-manager", "node-manager", "ray-client-server", "dashboard-agent-listen",
        "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")]
    # Unix socket paths under the temp dir must stay short: /tmp, not pytest's tmp_path.
    temp = tempfile.mkdtemp(prefix="rlft-ray-", dir="/tmp")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--include-dashboard", "true", "--num-cpus", "2", "--temp-dir", temp,
           "--disable-usage-stats", *ports]
    log = open(Path(temp) / "ray-start.log", "w")
    head = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dash}"
        _wait_for(url, head, Path(temp) / "ray-start.log")
        yield url, gcs, temp
    finally:
        head.send_signal(signal.SIGTERM)  # --block: kills the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # stragglers of this group only
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for(url: str, head: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until the job API answers (the dashboard and the node's job agent are up)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/", headers=AUTH),
                                        timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard at {url} did not answer in {timeout}s:\n"
                       f"{log.read_text()[-3000:]}")


def test_ray_job_submit_trains_on_the_cluster(tmp_path, tiny_model_path):
    # As in launch/README.md: the package comes from the nodes' install, the
    # working dir carries configs, data and reward files.
    runtime_env = {"excludes": ["/rlft/", "/workers/", "/rewards/"],
                   "env_vars": {"HF_HUB_OFFLINE": "1"}}
    with ray_head() as (url, gcs_port, temp):
        submit = [
            str(BIN / "ray"), "job", "submit", "--address", url, "--no-wait",
            "--submission-id", "rlft-test", "--working-dir", ".",
            "--runtime-env-json", json.dumps(runtime_env), "--",
            "rlft", "train", "launch/configs/grpo.yaml", f"model.name={tiny_model_path}",
            "rollout.engine=hf", "rollout.prompts_per_step=2", "rollout.n=2",
            "rollout.max_new_tokens=6", "train.steps=2", "checkpoint.every=2",
            "reward.num_workers=1", f"logging.run_dir={tmp_path}", "logging.run_name=job",
            "logging.loggers=[jsonl]",
        ]
        _submit(submit)
        client = JobSubmissionClient(url, headers=AUTH)
        status = _poll(client, "rlft-test", timeout=240)
        logs = client.get_job_logs("rlft-test")
        shipped = list(Path(temp).glob("session_latest/runtime_resources/working_dir_files/*/"))
        assert len(shipped) == 1, shipped
        assert (shipped[0] / "launch" / "configs" / "grpo.yaml").is_file()
        assert not (shipped[0] / "rlft").exists() and not (shipped[0] / ".venv").exists()
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "done: 2 steps" in logs, logs[-4000:]
    # The driver joined the head started above (RAY_ADDRESS), it did not start a cluster:
    # Ray's driver messages are in the run's logs/, the console has rlft's lines only.
    run = tmp_path / "job"
    driver = (run / "logs" / "driver.log").read_text()
    assert "Started a local Ray instance" not in driver + logs
    assert f"127.0.0.1:{gcs_port}" in driver, driver[-4000:]
    # The workers' output reached the run's logs too.
    assert "(Learner pid=" in (run / "logs" / "workers.log").read_text()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "checkpoints" / "step-000002").is_dir()
    assert (run / "config.yaml").is_file()


def _submit(cmd: list[str], timeout: float = 90) -> None:
    """The job API answers before the node's job agent has registered with it;
    until then Ray refuses with "No available agent ..., try again later"."""
    end = time.monotonic() + timeout
    while True:
        out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=120)
        if out.returncode == 0:
            return
        if "No available agent" not in out.stderr or time.monotonic() > end:
            raise AssertionError(f"ray job submit failed:\n{out.stdout}\n{out.stderr[-3000:]}")
        time.sleep(2)


def _poll(client: JobSubmissionClient, job_id: str, timeout: float) -> JobStatus:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {status} after {timeout}s:\n"
                       f"{client.get_job_logs(job_id)[-4000:]}")
