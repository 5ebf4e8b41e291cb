"""`kill -9` of the whole `rlft train` process group, then `--resume auto`.

One uninterrupted reference run and one run killed twice: first inside
`checkpoint.save` (marker written, rename pending: RLFT_FAULT_SLOW_SAVE holds it
there) while step 3 is saved, then at a random moment after a random later
checkpoint. The data has 4 prompts and a step takes 2, so the checkpoint the
first resume starts from (step 2) ends an epoch: the resumed run must still
train the remaining steps (verl's resume ran zero steps there). More kill
rounds: benchmarks/faults.py. RLFT_FAULT_SEED picks other random moments.

Each launch costs ~45 s of Ray and actor start-up on 2 cores, so this test
takes about 3 minutes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from fault_harness import (
    Launch,
    metrics_by_step,
    read_checkpoint,
    run_with_kills,
    same_tensors,
    secret_leaks,
    train_args,
    write_prompts,
)

from rlft.run import checkpoint

STEPS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    data = write_prompts(work / "prompts.jsonl", 4)
    ref = Launch(train_args(work / "ref", data, STEPS), work / "ref.log")
    assert ref.wait(600) == 0, (work / "ref.log").read_text()[-3000:]
    rng = random.Random(int(os.environ.get("RLFT_FAULT_SEED", "0")))
    faulted = run_with_kills(work, data, STEPS, ["save@3", "step"], rng)
    return work, faulted


def test_every_kill_leaves_intact_checkpoints_and_no_processes(runs):
    _, faulted = runs
    assert [k.kind for k in faulted.kills] == ["save", "step"]
    assert all(k.steps_done < STEPS for k in faulted.kills), "a kill landed after the run ended"
    for kill in faulted.kills:
        assert kill.unreadable == [], kill
        assert kill.stray == 0, f"{kill.stray} Ray/rlft processes outlived the kill"
    # Killed between the marker and the rename: step 3 is not complete.
    assert faulted.kills[0].resume_step == 2


def test_resume_loads_only_the_newest_complete_checkpoint(runs):
    _, faulted = runs
    # Never the held temp folder, never an older one: the newest complete each time.
    assert faulted.resumes == [(None, None), ("step-000002", "step-000002"),
                               (f"step-{faulted.kills[1].resume_step:06d}",) * 2]
    assert faulted.wrong_resumes == []
    assert faulted.final_code == 0, faulted.logs[-1].read_text()[-3000:]
    ckpts = faulted.run / "checkpoints"
    leftovers = [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "a later save removes the temp folders of killed writers"
    assert all((p / checkpoint.MARKER).is_file() for p in ckpts.iterdir())


def test_resume_at_an_epoch_boundary_trains_the_remaining_steps(runs):
    work, faulted = runs
    boundary = read_checkpoint(faulted.run / "checkpoints" / "step-000006", work / "scratch")
    assert boundary["state"]["step"] == STEPS
    assert sorted(metrics_by_step(faulted.run)) == list(range(STEPS))
    # Each step logged once, in order: every resume dropped the records of the steps it redid.
    lines = (faulted.run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(STEPS))
    first_resume = faulted.logs[1].read_text()
    assert "resumed from" in first_resume and "step-000002" in first_resume


def test_killed_and_resumed_run_equals_the_uninterrupted_one_bit_for_bit(runs):
    work, faulted = runs
    ref_ckpt = work / "ref" / "run" / "checkpoints" / "step-000006"
    want = read_checkpoint(ref_ckpt, work / "scratch")
    got = read_checkpoint(faulted.run / "checkpoints" / "step-000006", work / "scratch")
    assert got["state"] == want["state"]
    assert same_tensors(got["tensors"], want["tensors"]) == []  # weights and optimizer state
    ref_metrics, metrics = metrics_by_step(work / "ref" / "run"), metrics_by_step(faulted.run)
    for step in range(STEPS):
        for key in ("reward/mean", "loss", "grad_norm"):
            assert metrics[step][key] == ref_metrics[step][key], (step, key)


def test_secrets_never_reach_logs_or_the_run_folder(runs):
    work, faulted = runs
    assert secret_leaks(work / "ref", work / "ref.log", faulted.run, *faulted.logs) == []


def test_leftovers_of_dead_writers_are_ignored_then_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    checkpoint.save(tmp_path, checkpoint.TrainerState(1, 1, {}), lambda p: os.makedirs(p), 3)
    held = tmp_path / f".tmp-step-000002-{dead}"  # killed between marker and rename
    held.mkdir()
    (held / checkpoint.MARKER).write_text("ok\n")
    half = tmp_path / f".old-step-000000-{dead}"  # killed while deleting an old one
    half.mkdir()
    (half / checkpoint.MARKER).write_text("ok\n")
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step-000001"]
    checkpoint.load_state(checkpoint.latest(tmp_path))  # a resume clears them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]
