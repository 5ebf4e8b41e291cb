"""Security defaults: loopback-only local cluster, no pickle on load, no secrets on disk."""

from __future__ import annotations

import ast
import os
import pickle
import re
import socket
from pathlib import Path

import pytest
import ray
import torch

from rlft.config import load_config
from rlft.rewards.base import RewardTerm
from rlft.run import checkpoint
from rlft.run.folder import RunFolder
from rlft.workers.learner import Learner, LearnerParams
from rlft.workers.placement import actor, free_port, init_ray
from rlft.workers.reward import RewardService

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _descendants(root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += kids.get(pid, [])
    return out


def _listening() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP socket in LISTEN state."""
    out = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(path).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word LE
            out[cols[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return out


def _listening_of(pids: set[int]) -> list[tuple[int, str, int]]:
    sockets = _listening()
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m and m.group(1) in sockets:
                found.append((pid, *sockets[m.group(1)]))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:80]
    except OSError:
        return "?"


def test_local_cluster_and_learner_rendezvous_listen_on_loopback_only(tiny_model_path):
    ray.shutdown()
    init_ray(None, 1)
    try:
        service = actor(RewardService, [RewardTerm("format")], num_workers=0)
        # A learner rank 0 as build_pools makes it: gloo and its TCPStore rendezvous.
        learner = actor(Learner, tiny_model_path, LearnerParams(), rank=0, world_size=1,
                        init_method=f"tcp://127.0.0.1:{free_port()}")
        ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in (service, learner)])
        found = _listening_of(_descendants(os.getpid()))
        assert len(found) >= 4  # GCS, raylet, agents, this driver and the worker
        exposed = [(*f, _cmdline(f[0])) for f in found if f[1] not in LOOPBACK]
        assert exposed == [], f"listening beyond loopback: {exposed}"
    finally:
        ray.shutdown()


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for folder in ("rlft", "workers", "rewards"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "load" and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id in ("torch", "pickle"):
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                               and k.value.value is True for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls, "the scan found no torch.load at all: is it still looking in the right place?"
    assert [c for c, safe in calls if not safe] == []


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    ckpt = checkpoint.save(tmp_path, checkpoint.TrainerState(1, 1, {}),
                           lambda p: os.makedirs(p), keep=1)
    torch.save({"python": _Payload()}, ckpt / "rng.pt")  # a tampered RNG file
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load_state(ckpt)
    assert not _Payload.ran


def test_the_run_config_holds_no_secret(tmp_path, monkeypatch):
    secret = "wandb-" + "9" * 32
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = load_config(None, [f"logging.run_dir={tmp_path}", "logging.run_name=r",
                             "logging.loggers=[console, jsonl, wandb]"])
    run = RunFolder.create(cfg, None)
    assert secret not in (run.path / "config.yaml").read_text()
    assert secret not in repr(run.config_dict)


def test_docs_say_reward_files_are_code():
    assert "Reward files are code" in (ROOT / "docs" / "rewards.md").read_text()

