"""Checkpoints are all-or-nothing: a crash mid-write never shadows the last good one."""

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from rlft.run import checkpoint
from rlft.run.checkpoint import TrainerState


def _learner_writer(payload: bytes):
    def save(path: str) -> None:
        os.makedirs(path)
        with open(os.path.join(path, "weights.bin"), "wb") as f:
            f.write(payload)
    return save


def test_save_prune_and_latest(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, TrainerState(step, step, {"pos": step}), _learner_writer(b"x"),
                        keep=2)
    done = checkpoint.complete(tmp_path)
    assert [p.name for p in done] == ["step-000002", "step-000003"]
    assert checkpoint.latest(tmp_path).name == "step-000003"
    assert checkpoint.load_state(done[-1]).sampler == {"pos": 3}


def test_half_written_checkpoint_is_ignored(tmp_path):
    checkpoint.save(tmp_path, TrainerState(1, 1, {}), _learner_writer(b"good"), keep=3)

    def crash(path: str) -> None:
        os.makedirs(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path, TrainerState(2, 2, {}), crash, keep=3)
    # A folder named like a checkpoint but without the marker is not complete either.
    (tmp_path / "step-000005").mkdir()
    assert checkpoint.latest(tmp_path).name == "step-000001"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load_state(tmp_path / "step-000005")


def test_rng_state_restored(tmp_path):
    random.seed(1)
    torch.manual_seed(1)
    ckpt = checkpoint.save(tmp_path, TrainerState(1, 1, {}), _learner_writer(b""), keep=1)
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    checkpoint.load_state(ckpt)
    got = (random.random(), torch.rand(3))
    assert expected[0] == got[0] and torch.equal(expected[1], got[1])


def test_kill_during_write_keeps_previous(tmp_path):
    """SIGKILL a writer while it writes a big checkpoint; the old one stays newest."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from rlft.run import checkpoint
        root = Path({str(tmp_path)!r})
        checkpoint.save(root, checkpoint.TrainerState(1, 1, {{}}),
                        lambda p: (os.makedirs(p), open(p + '/w', 'wb').write(b'1')), keep=5)
        def slow(p):
            os.makedirs(p)
            with open(p + '/w', 'wb') as f:
                print('writing', flush=True)
                while True:
                    f.write(b'0' * 1024)
                    time.sleep(0.001)
        checkpoint.save(root, checkpoint.TrainerState(2, 2, {{}}), slow, keep=5)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(tmp_path).name == "step-000001"
    assert (checkpoint.latest(tmp_path) / "learner" / "w").read_bytes() == b"1"
