"""The default run's memory settings: the CPU learner reuses freed pages (under
tcmalloc, or glibc kept from trimming), and micro-batches and the CPU KV cache
are sized to the work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rlft.config import load_config
from rlft.learner.distributed import keep_freed_memory
from rlft.run.wiring import micro_batch_tokens
from rlft.workers import placement

# Allocate and free a 256 MiB tensor (one mmap by default) six times, and
# count the page faults of the last four: with glibc's defaults each one maps
# and first-touches fresh pages; kept, the freed block is reused once the
# heap has settled (the first two grow it).
PROBE = """
import resource, torch
from rlft.learner.distributed import keep_freed_memory
print(keep_freed_memory(torch.device("cpu")))
torch.ones(64 << 20).sum()
torch.ones(64 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(64 << 20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(default: bool, extra: dict[str, str] | None = None) -> tuple[str, int]:
    env = {**os.environ, "RLFT_MALLOC_DEFAULT": "1" if default else "0", **(extra or {})}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_cpu_learner_reuses_freed_memory_instead_of_faulting_it_in_again():
    applied, kept = _faults(default=False)
    skipped, fresh = _faults(default=True)
    assert (applied, skipped) == ("True", "False")
    pages = 4 * (256 << 20) // 4096  # four tensors' worth of 4 KiB pages
    assert fresh > pages // 2, fresh  # every allocation faulted in again
    assert kept < pages // 20, kept  # the same pages, reused
    assert keep_freed_memory(torch.device("meta")) is False  # only CPU learners


def test_tcmalloc_actors_reuse_freed_memory_too():
    env = placement.allocator_env("auto")
    if not env:
        pytest.skip("libtcmalloc_minimal is not installed (launch/setup.sh installs it as root)")
    assert env == placement.allocator_env("tcmalloc")
    assert env["TCMALLOC_RELEASE_RATE"] == "0"
    # glibc's own settings off (RLFT_MALLOC_DEFAULT=1): the reuse is tcmalloc's.
    _, faults = _faults(default=True, extra=env)
    assert faults < 4 * (256 << 20) // 4096 // 20, faults


def test_an_allocator_asked_for_but_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(placement.ALLOCATORS, "tcmalloc",
                        ("rlft_no_such_malloc", "libtcmalloc-minimal4", {}))
    assert placement.allocator_env("auto") == {}  # auto: glibc, quietly
    with pytest.raises(FileNotFoundError, match="librlft_no_such_malloc is not installed.*"
                       "apt-get install libtcmalloc-minimal4.*ray.cpu_allocator=glibc"):
        placement.allocator_env("tcmalloc")


def test_micro_batch_tokens_default_by_device():
    assert micro_batch_tokens(load_config(), gpu=False) == 768
    assert micro_batch_tokens(load_config(), gpu=True) == 8192
    assert micro_batch_tokens(load_config(None, ["train.micro_batch_tokens=512"]), gpu=True) == 512
