"""Fault injection on tiny runs: what survives, what is lost.

    python benchmarks/faults.py [--kills 6] [--steps 8] [--seed 0] [--work DIR]

Faults (tiny random model, transformers engine, CPU):
- process: `kill -9` of the whole `rlft train` process group, cycling through
  start-up, inside `checkpoint.save` (marker written, rename pending) and a
  random moment after a random checkpoint; `--resume auto` after each. The
  final checkpoint (weights, optimizer state, trainer state) is compared
  bit for bit with an uninterrupted run.
- actor: SIGKILL of the rollout worker while it generates, of the reward
  actor while it scores (both restarted by Ray), of the learner mid-run
  (the run stops; `--resume auto` continues it).
- reward: calls that raise, hang, return NaN/inf/a string, kill their
  process or print a megabyte, one per batch; then a batch past the failure
  ceiling.
- numerical: a NaN gradient under a finite loss, an inf loss; then K in a row.
- bad input: configs, data and reward files that must fail before Ray starts.
- async (train.max_staleness=1): kill -9 inside checkpoint.save and mid-step
  while a batch is sampled ahead, `--resume auto` after each; SIGKILL of the
  rollout worker while it samples ahead. Data lost counts prompts skipped or
  trained twice (the run's trained.jsonl).

Columns: injected faults; runs completed (the run, or the step, went on to
its end); steps lost (finished steps redone after a resume); data lost
(checkpoints that did not load whole, resumes from other than the newest
complete checkpoint, final weights unlike the fault-free run's, samples
scored wrongly): must be 0.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faults"))

import fault_harness as fh  # noqa: E402  (shared with tests/faults)
import ray  # noqa: E402
import torch  # noqa: E402

from rlft.config import ConfigError, load_config  # noqa: E402
from rlft.loop import TrainingLoop  # noqa: E402
from rlft.models import resolve_model  # noqa: E402


@dataclass
class Row:
    fault: str
    injected: int
    completed: int
    steps_lost: int
    data_lost: int
    note: str = ""


# -- process kills ---------------------------------------------------------------

def process_faults(work: Path, kills: int, steps: int, seed: int) -> list[Row]:
    data = fh.write_prompts(work / "prompts.jsonl", 4)
    ref = fh.Launch(fh.train_args(work / "ref", data, steps, keep=steps), work / "ref.log")
    if ref.wait(900) != 0:
        raise RuntimeError(f"reference run failed; see {work / 'ref.log'}")
    plan = [("startup", "save", "step")[i % 3] for i in range(kills)]
    run = fh.run_with_kills(work, data, steps, plan, random.Random(seed), keep=steps)
    final = f"step-{steps:06d}"
    want = fh.read_checkpoint(work / "ref" / "run" / "checkpoints" / final, work / "scratch")
    got = fh.read_checkpoint(run.run / "checkpoints" / final, work / "scratch")
    differ = fh.same_tensors(got["tensors"], want["tensors"])
    wrong_resume = len(run.wrong_resumes)
    leaks = fh.secret_leaks(work / "ref", run.run, *run.logs)
    rows = []
    for kind, label in (("startup", "kill -9 during start-up"),
                        ("save", "kill -9 inside checkpoint save"),
                        ("step", "kill -9 at a random moment")):
        ks = [k for k in run.kills if k.kind == kind]
        if ks:
            landed = (f"; {sum(k.in_startup for k in ks)} of {len(ks)} before the first step"
                      if kind == "startup" else "")
            rows.append(Row(label, len(ks), len(ks) * (run.final_code == 0),
                            sum(max(k.steps_done - k.resume_step, 0) for k in ks),
                            sum(len(k.unreadable) for k in ks),
                            f"{sum(k.stray for k in ks)} stray processes{landed}"))
    rows.append(Row("  -> resumed run vs uninterrupted", 1, int(run.final_code == 0), 0,
                    wrong_resume + int(bool(differ) or got["state"] != want["state"])
                    + len(leaks),
                    f"{len(want['tensors'])} tensors bit-identical: {not differ}; "
                    f"resumed from {', '.join(got for _, got in run.resumes if got)}"))
    return rows


# -- asynchronous runs (train.max_staleness=1) ------------------------------------

ASYNC = ("train.max_staleness=1", "algo.rollout_is.mode=tis")


def _ledger_faults(run: Path, steps: int, prompts: int) -> tuple[int, str]:
    """Draws skipped or trained twice according to the run's trained.jsonl."""
    from rlft.run.ledger import NAME, read

    ledger = read(run / NAME)
    draws = [g for r in ledger for g in r["draws"]]
    want = list(range(steps * prompts))
    bad = len(set(want) - set(draws)) + len(draws) - len(set(draws)) + \
        int([r["step"] for r in ledger] != list(range(steps)))
    return bad, f"{len(draws)} draws trained once each: {draws == want}"


def async_process_faults(work: Path, kills: int, steps: int, seed: int) -> list[Row]:
    """kill -9 of an async run inside checkpoint.save and at random moments."""
    data = fh.write_prompts(work / "prompts.jsonl", 4)
    plan = [("save", "step")[i % 2] for i in range(kills)]
    run = fh.run_with_kills(work, data, steps, plan, random.Random(seed), keep=steps,
                            extra=ASYNC)
    bad, note = _ledger_faults(run.run, steps, 2)
    return [Row("async K=1: kill -9 (in save, mid-step), --resume auto", len(run.kills),
                len(run.kills) * (run.final_code == 0), run.steps_lost,
                bad + len(run.wrong_resumes) + sum(len(k.unreadable) for k in run.kills),
                f"{note}; in-flight batch drawn again on resume")]


def async_actor_faults(work: Path) -> list[Row]:
    """SIGKILL of the rollout worker while it samples a batch ahead of the learner."""
    cfg = load_config(None, [*_overrides(work, "async", 4), *ASYNC])
    t = TrainingLoop(cfg)
    got = [t.train_step()]
    pid = fh.actor_pid(t.pools.rollout[0])
    kill = fh.KillWhen(fh.when_busy(pid))
    got += [t.train_step() for _ in range(3)]
    t.close()
    bad, note = _ledger_faults(work / "async", 4, 2)
    again = sum(m.extra["async/regenerated"] for m in got)
    return [Row("async K=1: rollout worker SIGKILL while sampling ahead", 1,
                int(bool(kill.fired)), 0, bad,
                f"restarted, weights re-sent, batch sampled again ({again:.0f}); {note}")]


# -- actor kills (in-process trainer on a local cluster) -------------------------

def _overrides(work: Path, name: str, steps: int, every: int = 0) -> list[str]:
    reward = f"{ROOT / 'tests' / 'faults' / 'fault_rewards.py'}:flagged_chars"
    return [f"model.name={resolve_model('tiny-random')}", "rollout.engine=hf",
            "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=64",
            "reward.num_workers=0",
            f"reward.terms=[{{name: '{reward}', kwargs: {{flag: '{work / name}.flag', "
            "delay: 0.2}}]", f"train.steps={steps}", "train.lr=1.0e-3",
            f"checkpoint.every={every}", f"logging.run_dir={work}", f"logging.run_name={name}",
            "logging.loggers=[jsonl]", "ray.num_cpus=2"]


def _weights(trainer: TrainingLoop) -> dict[str, torch.Tensor]:
    return ray.get([lrn.full_state.remote() for lrn in trainer.pools.learners])[0]


def actor_faults(work: Path) -> list[Row]:
    ref = TrainingLoop(load_config(None, _overrides(work, "ref", 4)))
    want = [ref.train_step().reward_mean for _ in range(4)]
    want_w = _weights(ref)
    ref.close()

    t = TrainingLoop(load_config(None, _overrides(work, "actors", 4)))
    got = [t.train_step().reward_mean]
    pid = fh.actor_pid(t.pools.rollout[0])
    rollout_kill = fh.KillWhen(fh.when_busy(pid))
    got.append(t.train_step().reward_mean)
    flag = work / "actors.flag"
    flag.unlink()
    pid = fh.actor_pid(t.pools.reward)
    reward_kill = fh.KillWhen(lambda: pid if flag.exists() else None)
    got.append(t.train_step().reward_mean)
    got.append(t.train_step().reward_mean)
    got_w = _weights(t)
    t.close()
    same = got == want and all(torch.equal(got_w[k], want_w[k]) for k in want_w)
    rows = [Row("rollout worker SIGKILL mid-generate", 1, int(bool(rollout_kill.fired)), 0,
                int(not same), "restarted, weights re-sent, step retried"),
            Row("reward actor SIGKILL mid-score", 1, int(bool(reward_kill.fired)), 0,
                int(not same), "restarted, call retried; run bit-identical: " + str(same))]

    metrics = work / "learner" / "metrics.jsonl"
    found: dict = {}
    cfg = load_config(None, _overrides(work, "learner", 6, every=1))
    t = TrainingLoop(cfg)
    killer = fh.KillWhen(fh.learner_once_logged(metrics, 3, found), timeout=300)
    try:
        t.train()
        stopped = False
    except ray.exceptions.RayActorError:
        stopped = True
    finally:
        t.close()
    killer.join()
    done = len(fh.metrics_by_step(metrics.parent))
    resumed = TrainingLoop(cfg, resume="auto")
    start = resumed.step
    resumed.train()
    resumed.close()
    complete = sorted(fh.metrics_by_step(metrics.parent)) == list(range(6))
    rows.append(Row("learner SIGKILL mid-run", 1, int(stopped and complete), done - start, 0,
                    f"run stopped ({stopped}); --resume auto from step {start} finished"))
    return rows


# -- reward faults ---------------------------------------------------------------

CHAOS = '''
import os, time

def chaos(completion, **fields):
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "hang":
        time.sleep(60)
    if completion == "nan":
        return float("nan")
    if completion == "inf":
        return float("inf")
    if completion == "str":
        return "1.0"
    if completion == "exit":
        os._exit(3)
    if completion == "print":
        print("x" * 1_000_000)
    if completion == "none":
        return None
    return 1.0
'''


def reward_faults(work: Path) -> list[Row]:
    from rlft.rewards import RewardTerm
    from rlft.types import Prompt, Rollouts
    from rlft.workers.reward import RewardFailureError, RewardService

    def batch(texts: list[str]) -> Rollouts:
        n = len(texts)
        prompts = tuple(Prompt(uid=f"u{i}", text="q", prompt_ids=(1,)) for i in range(n))
        return Rollouts(prompt_index=tuple(range(n)), prompts=prompts, prompt_ids=((1,),) * n,
                        response_ids=((2,),) * n, response_text=tuple(texts),
                        rollout_logprobs=((0.0,),) * n, prefix_len=(0,) * n,
                        finish_reason=("stop",) * n, group_id=tuple(range(n)), policy_version=0)

    path = work / "chaos.py"
    path.write_text(textwrap.dedent(CHAOS))
    svc = RewardService([RewardTerm(f"{path}:chaos")], num_workers=2, timeout_s=1.0,
                        fallback=-1.0, max_failure_frac=0.5)
    rows = []
    try:
        for kind in ("raise", "hang", "nan", "inf", "str", "exit", "print", "none"):
            out = svc.score(batch([kind] + ["ok"] * 7))
            wrong = int(not torch.equal(out.rewards[1:], torch.ones(7)))
            fail = 0 if kind in ("print", "none") else 1
            wrong += int(out.failures.total != fail)  # counted once, in the right sample
            rows.append(Row(f"reward {kind}", 1, 1, 0, wrong,
                            f"failures {out.failures}, that sample's reward {out.rewards[0]:.1f}"))
        try:
            svc.score(batch(["raise"] * 5 + ["ok"] * 3))
            ceiling = ""
        except RewardFailureError as exc:
            ceiling = str(exc).split(";")[0][:70]
        rows.append(Row("reward failures over the ceiling", 1, 0, 0, 0,
                        f"aborts: {ceiling}" if ceiling else "DID NOT ABORT"))
    finally:
        svc.close()
    return rows


# -- numerical faults and bad input ----------------------------------------------

def numerical_faults() -> list[Row]:
    import test_numerical_faults as nf

    model = resolve_model("tiny-random")
    b0, b1 = nf._batch(0), nf._batch(1)
    plan = [(b0, nf.GOOD), (nf._batch(2), nf.NAN_GRAD), (nf._batch(3, inf_adv=True), nf.GOOD),
            (b1, nf.GOOD)]
    stats, faulted, _ = nf._run(model, plan)
    _, clean, _ = nf._run(model, [(b0, nf.GOOD), (b1, nf.GOOD)])
    corrupted = sum(not torch.equal(faulted[k], clean[k]) for k in clean)
    try:
        nf._run(model, plan[1:3], max_nonfinite_steps=2)
        aborted = False
    except nf.NonFiniteError:
        aborted = True
    return [Row("NaN gradient / inf loss", 2, int(stats[1].skipped and stats[2].skipped), 0,
                corrupted, "skipped; later weights equal a run without them"),
            Row("non-finite updates, 2 in a row (limit 2)", 2, 0, 0, 0,
                f"aborts with NonFiniteError: {aborted}")]


def bad_input(work: Path) -> list[Row]:
    missing = work / "nope.py"
    (work / "empty.jsonl").write_text("")
    (work / "noprompt.jsonl").write_text('{"question": "x"}\n')
    (work / "long.jsonl").write_text('{"prompt": "' + "word " * 2000 + '"}\n')
    (work / "r.py").write_text("def score(completion, **fields):\n    return 1.0\n")
    base = ["model.name=tiny-random", "rollout.engine=hf", f"logging.run_dir={work / 'bad'}"]
    cases = [["train.steps=abc"], ["rollout.top_p=2"], ["train.stepz=1"], ["train.lr=.nan"],
             ["rollout.stop=[a"], [f"data.source={work / 'empty.jsonl'}"],
             [f"data.source={work / 'noprompt.jsonl'}"], [f"data.source={work / 'long.jsonl'}"],
             [f"data.source={work / 'long.jsonl'}", "data.max_prompt_tokens=4000"],
             [f"reward.terms=[{{name: '{missing}:f'}}]"],
             [f"reward.terms=[{{name: '{work / 'r.py'}:scroe'}}]"]]
    early = 0
    for extra in cases:
        ray.shutdown()
        try:
            TrainingLoop(load_config(None, base + extra)).close()
        except (ConfigError, ValueError, FileNotFoundError):
            early += int(not ray.is_initialized())
    return [Row("bad config / data / reward file", len(cases), 0, 0, len(cases) - early,
                f"{early} rejected before Ray or a model started")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=6, help="process kills (cycling the 3 kinds)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    ns = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(ns.work or tempfile.mkdtemp(prefix="rlft-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = process_faults(_mk(work / "process"), ns.kills, ns.steps, ns.seed)
    rows += actor_faults(_mk(work / "actor"))
    rows += async_actor_faults(_mk(work / "async-actor"))
    ray.shutdown()
    rows += async_process_faults(_mk(work / "async"), max(2, ns.kills // 2), ns.steps, ns.seed)
    rows += reward_faults(_mk(work / "reward"))
    rows += numerical_faults()
    rows += bad_input(_mk(work / "input"))
    ray.shutdown()
    print("\n| fault | injected | runs completed | steps lost | data lost | note |\n"
          "| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r.fault} | {r.injected} | {r.completed} | {r.steps_lost} | {r.data_lost} | "
              f"{r.note} |")
    lost = sum(r.data_lost for r in rows)
    print(f"\n{sum(r.injected for r in rows)} faults, data lost {lost}, "
          f"{time.time() - start:.0f} s; runs in {work}")
    return int(lost != 0)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
