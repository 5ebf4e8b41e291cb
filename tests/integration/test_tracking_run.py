"""A tiny `rlft train` with wandb (offline) and TensorBoard sinks and a fake
WANDB_API_KEY in the environment: the key is neither printed nor written, the
run's config, git commit and package versions are logged with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KEY = "0123456789abcdef" * 2 + "feedbeef"  # 40 hex characters, like a real wandb key


def test_a_run_with_wandb_and_tensorboard_never_leaks_the_key(tmp_path, tiny_model_path):
    home = tmp_path / "home"  # wandb's config/cache/data dirs, scanned too
    env = {**os.environ, "WANDB_API_KEY": KEY, "WANDB_MODE": "offline",
           "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
           "WANDB_DATA_DIR": str(home / "data"), "WANDB_SILENT": "false"}
    env.pop("RAY_ADDRESS", None)
    rlft = Path(sys.executable).with_name("rlft")
    out = subprocess.run(
        [str(rlft), "train", f"model.name={tiny_model_path}", "rollout.engine=hf",
         "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=6",
         "train.steps=2", "reward.num_workers=1", "ray.num_cpus=2",
         f"logging.run_dir={tmp_path / 'runs'}", "logging.run_name=tracked",
         "logging.loggers=[console, jsonl, wandb, tensorboard]"],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "done: 2 steps" in out.stdout
    assert KEY not in out.stdout + out.stderr

    run = tmp_path / "runs" / "tracked"
    # The run ends with its picture, named in the last line.
    assert out.stdout.strip().splitlines()[-1] == f"curves: {run / 'curves.png'}"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaks = [str(p) for p in written if KEY.encode() in p.read_bytes()]
    assert leaks == []
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, f"no offline wandb run under {run / 'wandb'}"
    # The run config wandb recorded (in its offline log) carries rlft/run/folder.py's provenance.
    record = next(offline[0].glob("*.wandb")).read_bytes()
    assert b"git_commit" in record and b"transformers" in record and b"max_new_tokens" in record
