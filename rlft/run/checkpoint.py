"""Crash-safe checkpoints: write into a temp folder, mark complete, rename.

A checkpoint folder `step-000010/` is only ever seen complete: it is written
as `.tmp-step-000010-<pid>/`, fsynced, given a `COMPLETE` marker, then renamed
in one atomic `os.rename`. Resume looks only at folders with the marker, so a
crash mid-write (even `kill -9`) leaves the previous checkpoint as the newest.
A complete folder is never deleted in place: it is first renamed out of the
`step-*` namespace (`.old-*`), so a crash mid-delete cannot leave a folder that
has its marker but lacks files. The next save removes what dead writers left.

Fault tests set RLFT_FAULT_SLOW_SAVE=<seconds> to hold the writer after the
marker and before the rename, the moment a crash is most dangerous.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

MARKER = "COMPLETE"
_NAME = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.(?:tmp|old)-step-\d+-(\d+)$")


@dataclass(frozen=True)
class TrainerState:
    """Everything besides the learner's own state needed to continue a run."""

    step: int  # steps completed
    policy_version: int
    # PromptSampler.state_dict() before the first prompt not yet trained: with
    # train.max_staleness >= 1 the batches sampled ahead (`inflight`: their step,
    # policy version and sampler draws) are drawn again on resume, not skipped.
    sampler: dict
    inflight: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def save(ckpt_root: Path, state: TrainerState, save_learner: Callable[[str], None],
         keep: int) -> Path:
    """Write one checkpoint and prune to the newest `keep` complete ones."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(ckpt_root)
    final = ckpt_root / f"step-{state.step:06d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_learner(str(tmp / "learner"))
    (tmp / "trainer_state.json").write_text(state.to_json())
    torch.save(_rng_state(), tmp / "rng.pt")
    _fsync_tree(tmp)
    (tmp / MARKER).write_text("ok\n")
    _fsync_tree(tmp)
    if os.environ.get("RLFT_FAULT_SLOW_SAVE"):
        time.sleep(float(os.environ["RLFT_FAULT_SLOW_SAVE"]))
    if final.exists():  # a re-run of the same step after a resume
        _discard(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    for old in complete(ckpt_root)[:-keep]:
        _discard(old)
    return final


def _discard(ckpt: Path) -> None:
    """Rename out of the `step-*` names first, so no crash leaves half a checkpoint."""
    old = ckpt.with_name(f".old-{ckpt.name}-{os.getpid()}")
    try:
        os.rename(ckpt, old)
    except FileNotFoundError:  # already gone
        return
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(ckpt_root: Path) -> None:
    """Delete `.tmp-*` / `.old-*` folders whose writer process is gone."""
    for p in ckpt_root.iterdir():
        m = _LEFTOVER.match(p.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this process is from an earlier failed save
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def complete(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir()
             if _NAME.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(ckpt_root: Path) -> Path | None:
    done = complete(ckpt_root)
    return done[-1] if done else None


def load_state(ckpt: Path) -> TrainerState:
    """Trainer state + RNG states of a complete checkpoint (learner loads its own)."""
    if not (ckpt / MARKER).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {MARKER} marker)")
    _remove_leftovers(ckpt.parent)  # a resume follows a crash: clear what it left
    state = TrainerState(**json.loads((ckpt / "trainer_state.json").read_text()))
    _set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
    return state


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}


def _set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


def _tuples(x: object) -> object:
    # torch.save keeps tuples, but be tolerant of lists from other writers.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
