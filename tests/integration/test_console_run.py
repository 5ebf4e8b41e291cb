"""Issue 17 items 4 and 9b on one real `rlft train` (tiny model, transformers
engine, its own process: Ray's driver options differ from the test session's).

A quiet console: rlft's own lines only (no Ray, vLLM or worker output), at most
40 lines; the run folder's logs/ holds the rest. Ctrl-C (SIGINT to the
process group, as a terminal sends it) after two steps: exit status 130, one
last line naming the step reached, the newest checkpoint and the resume
command, and no process of the run left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlft.run import checkpoint


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_quiet_console_logs_in_the_run_folder_and_ctrl_c_ends_in_one_line(tmp_path,
                                                                          tiny_model_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    rlft = Path(sys.executable).with_name("rlft")
    args = [f"model.name={tiny_model_path}", "rollout.engine=hf", "rollout.prompts_per_step=2",
            "rollout.n=2", "rollout.max_new_tokens=6", "train.steps=50", "checkpoint.every=1",
            "checkpoint.keep=2", "reward.num_workers=1", "ray.num_cpus=2",
            f"logging.run_dir={tmp_path}"]
    # SIGINT back to its default in the child: a shell script's background job
    # (`cmd &`) starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so a suite started that way would not test Ctrl-C.
    run = subprocess.Popen([str(rlft), "train", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        metrics = None
        while time.monotonic() < deadline and run.poll() is None:
            metrics = next(tmp_path.glob("*/metrics.jsonl"), None)
            if metrics and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        assert run.poll() is None, "the run ended before it could be interrupted"
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    console = out + err
    assert run.returncode == 130, console[-3000:]

    # The last line: where the run stands and how to go on. Ctrl-C may land
    # inside a save (the newest complete checkpoint is then the one before) or
    # between a step's update and its metrics line (one step more than logged).
    last = err.strip().splitlines()[-1]
    folder = metrics.parent
    done = len(metrics.read_text().splitlines())
    ckpt = checkpoint.latest(folder / "checkpoints")
    match = re.fullmatch(r"interrupted after step (\d+) of 50; newest checkpoint (\S+); "
                         r"resume with: rlft train .* --resume auto", last)
    assert match, last
    assert int(match[1]) in (done, done + 1) and match[2] == str(ckpt), (last, done, ckpt)
    assert last.endswith(f"logging.run_name={folder.name} --resume auto"), last
    assert "Traceback" not in console and "KeyboardInterrupt" not in console

    # Quiet: rlft's lines only, and few of them.
    lines = console.count("\n")
    assert lines <= 40, f"{lines} console lines:\n{console}"
    for noise in ("Started a local Ray instance", "pid=", "Loading weights"):
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    assert console.count("groups scored the same reward") == 1  # item 9a, once
    assert "step    0 |" in out

    # The rest is in the run folder.
    logs = folder / "logs"
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    workers = (logs / "workers.log").read_text()
    assert "(Learner pid=" in workers and "(RolloutWorker pid=" in workers
    record = json.loads(metrics.read_text().splitlines()[0])
    assert record["reward/flat_group_frac"] >= 0.0

    # Ray and the workers are gone with the driver.
    t = time.monotonic()
    while _group_alive(run.pid) and time.monotonic() - t < 30:
        time.sleep(0.5)
    assert not _group_alive(run.pid), "processes of the run outlived it"
