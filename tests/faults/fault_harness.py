"""Run `rlft train` as a process group, kill it, and check what it left behind.

Shared by tests/faults/test_process_faults.py (a few kills) and
benchmarks/faults.py (many). Every launch gets a tag in its environment; Ray
passes the environment on to the processes it starts, so `reap` finds every
process of a run (the driver, GCS, raylet, agents and actors, which Ray puts in
process groups of their own) and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from rlft.run import checkpoint, console

ROOT = Path(__file__).resolve().parents[2]
REWARD = f"{ROOT / 'tests' / 'integration' / 'length_reward.py'}:distinct_chars"
SECRET = f"wandb-secret-{uuid.uuid4().hex}"  # must never reach a log or the run folder


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Write the number {i}."}) + "\n"
                            for i in range(n)))
    return path


def train_args(run_dir: Path, data: Path, steps: int, extra: tuple[str, ...] = (),
               keep: int = 2) -> list[str]:
    """A tiny run: 2 prompts x 2 samples a step, a checkpoint every step."""
    return ["-m", "rlft.cli", "train", "model.name=tiny-random", "rollout.engine=hf",
            "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8",
            f"data.source={data}", "data.shuffle=true", f"reward.terms=[{{name: '{REWARD}'}}]",
            "reward.num_workers=0", f"train.steps={steps}", "train.lr=1.0e-3",
            "checkpoint.every=1", f"checkpoint.keep={keep}", f"logging.run_dir={run_dir}",
            "logging.run_name=run", "logging.loggers=[jsonl]", "ray.num_cpus=2", *extra]


@dataclass
class Launch:
    """One `rlft train` process group; `log` holds its stdout and stderr."""

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        # A short Ray temp dir: its socket paths must stay under 108 bytes.
        self.ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")
        env = {**os.environ, **self.env, "RLFT_FAULT_TAG": self.tag, "RAY_TMPDIR": self.ray_tmp,
               "WANDB_API_KEY": SECRET, "PYTHONPATH": str(ROOT)}
        self.started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, *self.args], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill(self) -> int:
        """SIGKILL the whole process group, then whatever Ray started; returns the
        number of run processes still alive 30 s after the kill (should be 0)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        return self.reap()

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reap()
        return code

    def reap(self, grace: float = 30.0) -> int:
        """Wait for the run's processes to exit; SIGKILL and count the stragglers."""
        deadline = time.monotonic() + grace
        while (left := tagged(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return len(left)


def tagged(tag: str) -> list[int]:
    """Pids whose environment carries RLFT_FAULT_TAG=tag."""
    needle = f"RLFT_FAULT_TAG={tag}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(name))
        except OSError:  # gone, or a zombie
            continue
    return pids


def wait_for(predicate, timeout: float, launch: Launch | None = None, poll: float = 0.02):
    """Poll until `predicate()` is truthy; fail early if the launch exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if launch is not None and launch.proc.poll() is not None:
            raise AssertionError(f"rlft train exited ({launch.proc.returncode}) before the "
                                 f"fault point; log:\n{launch.log.read_text()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for the fault point")


def tmp_with_marker(ckpt_root: Path, step: int):
    """A temp checkpoint of `step` that already has its COMPLETE marker (held by
    RLFT_FAULT_SLOW_SAVE just before the rename), or None."""
    if not ckpt_root.is_dir():
        return None
    for p in ckpt_root.glob(f".tmp-step-{step:06d}-*"):
        if (p / checkpoint.MARKER).is_file():
            return p
    return None


def has_complete(ckpt_root: Path, step: int) -> bool:
    return (ckpt_root / f"step-{step:06d}" / checkpoint.MARKER).is_file()


def read_checkpoint(ckpt: Path, scratch: Path) -> dict:
    """Every tensor of a checkpoint (model + optimizer) and its trainer state.

    Raises if anything is missing or unreadable: an intact checkpoint loads whole.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    flat = scratch / f"{ckpt.parent.parent.name}-{ckpt.name}.pt"
    dcp_to_torch_save(str(ckpt / "learner"), str(flat))
    tensors = torch.load(flat, weights_only=True)
    flat.unlink()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    json.loads((ckpt / "learner" / "learner.json").read_text())
    torch.load(ckpt / "rng.pt", weights_only=True)
    return {"tensors": tensors, "state": state}


def metrics_by_step(run: Path) -> dict[int, dict]:
    """The record of each step in metrics.jsonl (a resumed run first drops the
    records of the steps it redoes; the last one wins should a file hold two)."""
    out = {}
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[int(rec["step"])] = rec
    return out


def resumed_from(log_text: str) -> list[str]:
    """Checkpoint names in the 'resumed from' lines of a log, in order."""
    return [line.split("resumed from ", 1)[1].split()[0].rstrip("/").rsplit("/", 1)[-1]
            for line in log_text.splitlines() if "resumed from " in line]


def same_tensors(a: dict, b: dict) -> list[str]:
    """Names whose tensors differ (or exist on one side only)."""
    names = set(a) | set(b)
    return sorted(n for n in names
                  if n not in a or n not in b or not torch.equal(a[n], b[n]))


def secret_leaks(*roots: Path) -> list[str]:
    """Files under `roots` that contain SECRET."""
    needle = SECRET.encode()
    hits = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        hits += [str(p) for p in files if needle in p.read_bytes()]
    return hits


@dataclass
class Kill:
    kind: str  # "save": inside checkpoint.save, after the marker, before the rename
    #            "step": a random moment after a random checkpoint (mid-step or mid-save)
    #            "startup": a random moment before the first step of the launch
    steps_done: int  # step the killed launch had reached (finished and logged)
    resume_step: int  # step of the newest complete checkpoint it left
    stray: int  # run processes still alive 30 s after the kill
    unreadable: list[str]  # complete checkpoints that did not load whole
    in_startup: bool = False  # it landed before the launch restored or finished anything


@dataclass
class FaultedRun:
    run: Path
    logs: list[Path]
    kills: list[Kill]
    final_code: int
    # Per launch: (newest complete checkpoint when it started, the one its log
    # says it resumed from; None where it was killed before restoring).
    resumes: list[tuple[str | None, str | None]]

    @property
    def wrong_resumes(self) -> list[tuple[int, str | None, str | None]]:
        """Launches that restored anything but the newest complete checkpoint (or
        finished without restoring it)."""
        last = len(self.resumes) - 1
        return [(i, want, got) for i, (want, got) in enumerate(self.resumes)
                if got != want and (got is not None or i == last)]

    @property
    def steps_lost(self) -> int:
        """Finished steps redone after a resume (progress since the last checkpoint)."""
        return sum(max(k.steps_done - k.resume_step, 0) for k in self.kills)


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def steps_done(before: str, after: str, start_step: int) -> int:
    """Steps a launch that resumed at `start_step` had finished, from metrics.jsonl's
    text before it started and when it was killed. Its sink first drops the records
    of steps >= start_step (the crashed launch's), then appends its own; a launch
    killed before its sink opened left the file as it was."""
    if after == before:
        return start_step
    return start_step + sum(1 for line in after.splitlines()
                            if line.strip() and json.loads(line)["step"] >= start_step)


def run_with_kills(work: Path, data: Path, steps: int, plan: list[str], rng,
                   slow_save: float = 2.0, timeout: float = 600.0, keep: int = 2,
                   extra: tuple[str, ...] = ()) -> FaultedRun:
    """Launch `rlft train`, SIGKILL it once per entry of `plan`, `--resume auto`
    after each kill, and let the last launch finish. An entry is a `Kill.kind`,
    optionally with the checkpoint step it aims at: "save@3". `extra`: more
    overrides (e.g. train.max_staleness=1)."""
    run_dir = work / "faulted"
    ckpts = run_dir / "run" / "checkpoints"
    args = train_args(run_dir, data, steps, extra, keep=keep)
    kills, logs, starts = [], [], []
    for i, entry in enumerate([*plan, "finish"]):
        kind, _, at = entry.partition("@")
        log = work / f"launch-{i}.log"
        logs.append(log)
        env = {"RLFT_FAULT_SLOW_SAVE": str(slow_save)} if kind == "save" else {}
        start = checkpoint.latest(ckpts)
        starts.append(None if start is None else start.name)
        start_step = 0 if start is None else int(start.name.split("-")[1])
        logged = _text(run_dir / "run" / "metrics.jsonl")
        launch = Launch(args + (["--resume", "auto"] if i else []), log, env)
        if kind == "finish":
            code = launch.wait(timeout)
            break
        lo = start_step + 1
        if kind == "save" and lo <= steps - 1:
            # The kill lands inside save(): marker written, rename pending.
            target = int(at) if at else rng.randint(lo, min(lo + 1, steps - 1))
            wait_for(lambda t=target: tmp_with_marker(ckpts, t), timeout, launch)
        elif kind == "step" and lo <= steps - 2:
            target = int(at) if at else rng.randint(lo, min(lo + 1, steps - 2))
            wait_for(lambda t=target: has_complete(ckpts, t), timeout, launch)
            time.sleep(rng.uniform(0.0, 0.25))  # a step takes 0.3-1 s here
        else:  # start-up: Ray is up, the actors load the model (or the last checkpoint)
            kind = "startup"
            wait_for(lambda f=log: console.RAY_UP in f.read_text(errors="replace"),
                     timeout, launch)
            time.sleep(rng.uniform(0.0, 3.0))
        done = steps_done(logged, _text(run_dir / "run" / "metrics.jsonl"), start_step)
        # A start-up kill must land before the launch's first step: nothing of it
        # logged or saved, and no "resumed from" line yet when it restores one.
        early = (done == start_step and checkpoint.latest(ckpts) == start
                 and not resumed_from(log.read_text(errors="replace")))
        stray = launch.kill()
        latest = checkpoint.latest(ckpts)
        unreadable = []
        for ckpt in checkpoint.complete(ckpts):
            try:
                read_checkpoint(ckpt, work / "scratch")
            except Exception as exc:  # noqa: BLE001  (counted and reported, not hidden)
                unreadable.append(f"{ckpt.name}: {exc!r}")
        kills.append(Kill(kind, done, 0 if latest is None else int(latest.name.split("-")[1]),
                          stray, unreadable, in_startup=early))
    resumed = [(resumed_from(log.read_text(errors="replace")) or [None])[0] for log in logs]
    return FaultedRun(run_dir / "run", logs, kills, code, list(zip(starts, resumed)))


# -- in-process actor faults ---------------------------------------------------

def actor_pid(handle) -> int:
    import ray

    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks: it climbs while the process computes."""
    with open(f"/proc/{pid}/stat") as f:
        cols = f.read().rsplit(")", 1)[1].split()
    return int(cols[11]) + int(cols[12])


class KillWhen(threading.Thread):
    """SIGKILL the pid that `find()` returns, as soon as it returns one (polled every 5 ms)."""

    def __init__(self, find, timeout: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.find, self.timeout, self.fired = find, timeout, None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pid = self.find()
            if pid:
                os.kill(pid, signal.SIGKILL)
                self.fired = pid
                return
            time.sleep(0.005)


def when_busy(pid: int, ticks: int = 5):
    """A `KillWhen` finder: `pid` once it has used `ticks` of CPU from now on
    (an idle rollout worker starts generating)."""
    base = cpu_ticks(pid)
    return lambda: pid if cpu_ticks(pid) - base >= ticks else None


def learner_once_logged(metrics: Path, lines: int, found: dict):
    """A `KillWhen` finder: the live Learner actor's pid once `metrics` has `lines`
    records; its actor-table entry goes into `found`."""
    def find() -> int | None:
        import ray

        if not (ray.is_initialized() and metrics.is_file()
                and len(metrics.read_text().splitlines()) >= lines):
            return None
        from ray._private import state

        alive = [a for a in state.actors().values()
                 if a["ActorClassName"] == "Learner" and a["State"] == "ALIVE"]
        found.update(alive[0] if alive else {})
        return found.get("Pid")
    return find
