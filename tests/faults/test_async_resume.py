"""`kill -9` of an asynchronous run (train.max_staleness=1), then `--resume auto`.

The run is killed at a random moment after its step-2 checkpoint: mid-step or
mid-save, while the batch of the next step is being sampled ahead. Afterwards
the run's ledger (trained.jsonl: the sampler draws each step trained) must hold
every step once and every draw once, in order: the batch that was in flight at
the checkpoint was drawn again, neither skipped nor trained twice. The data has
4 prompts and a step takes 2, so every prompt uid appears once per epoch.
RLFT_FAULT_SEED picks other moments; benchmarks/faults.py kills more often.
Two launches: about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import time

from fault_harness import Launch, has_complete, metrics_by_step, train_args, wait_for, write_prompts

from rlft.run import checkpoint
from rlft.run.ledger import NAME, read

STEPS, PROMPTS, N = 6, 2, 2
ASYNC = ("train.max_staleness=1", "algo.rollout_is.mode=tis")


def test_kill9_mid_step_resumes_without_skipping_or_repeating_a_prompt(tmp_path):
    rng = random.Random(int(os.environ.get("RLFT_FAULT_SEED", "0")))
    data = write_prompts(tmp_path / "prompts.jsonl", 4)
    args = train_args(tmp_path, data, STEPS, extra=ASYNC, keep=STEPS)
    run = tmp_path / "run"
    first = Launch(args, tmp_path / "first.log")
    wait_for(lambda: has_complete(run / "checkpoints", 2), 600, first)
    time.sleep(rng.uniform(0.0, 0.5))  # a step takes 0.3-1 s here
    assert first.kill() == 0, "run processes outlived the kill"
    killed_at = checkpoint.latest(run / "checkpoints")
    state = json.loads((killed_at / "trainer_state.json").read_text())
    resume_step = state["step"]
    assert 2 <= resume_step < STEPS, "the kill landed after the run ended"
    # What was sampled ahead at the checkpoint, and where the sampler restarts.
    assert [b["step"] for b in state["inflight"]] == [resume_step]
    assert state["inflight"][0]["draws"] == [resume_step * PROMPTS, resume_step * PROMPTS + 1]
    assert state["sampler"]["position"] + 4 * state["sampler"]["epoch"] == resume_step * PROMPTS

    second = Launch([*args, "--resume", "auto"], tmp_path / "second.log")
    assert second.wait(600) == 0, (tmp_path / "second.log").read_text()[-3000:]

    ledger = read(run / NAME)
    assert [r["step"] for r in ledger] == list(range(STEPS))
    draws = [g for r in ledger for g in r["draws"]]
    assert draws == list(range(STEPS * PROMPTS)), "a prompt was skipped or trained twice"
    assert all(r["samples"] == PROMPTS * N and r["filtered"] == [] for r in ledger)
    uids = [u for r in ledger for u in r["uids"]]
    epochs = [uids[i:i + 4] for i in range(0, len(uids), 4)]  # each prompt once per epoch
    assert all(sorted(e) == sorted(set(uids)) and len(e) == 4 for e in epochs), epochs
    # Sampled one version back, except the first step and the first after the resume.
    stale = {s: rec["async/staleness_max"] for s, rec in metrics_by_step(run).items()}
    assert stale == {s: float(s not in (0, resume_step)) for s in range(STEPS)}
    assert [r["trained_version"] - r["sampled_version"] for r in ledger] == list(stale.values())
