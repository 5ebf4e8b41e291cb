"""Memory and CPU time of the default run: today's settings against the old ones.

Runs `rlft train` twice as a child process, each a short default run
(`train.steps=3` unless overridden), and samples every process of it (the
driver, Ray's own processes, the learner, the rollout worker and its vLLM
engine core, the reward processes) twice a second:

- resident memory: the peak over the run of the sum of every process's RSS
  (what the issue measured; shared pages count once per process) and of PSS
  (shared pages split between the processes that map them: the honest total),
  and each role's peak RSS;
- the learner's user and system CPU seconds (system time is the kernel
  first-touching fresh memory);
- wall time of the whole run and the mean learner update and rollout time per
  step, and which malloc the learner and rollout processes map.

"before" is the run with the old settings, `train.micro_batch_tokens=4096
rollout.kv_cache_gb=2 rollout.vllm_in_process=false ray.cpu_allocator=glibc`,
and `RLFT_MALLOC_DEFAULT=1`, which leaves glibc's malloc as it was (freed
activations go back to the kernel and are first-touched again every update);
"after" is the defaults (with rollout.engine=hf, "before" drops the vLLM-only
settings). The last table gives after / before for each figure.

    .venv/bin/python benchmarks/bench_memory.py [--steps N] [--small] [key=value ...]

--small: a smoke run (one step each, tiny-random model, transformers engine,
2 prompts x 2 samples); its figures mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Process title (Ray sets `ray::<Class>`) -> role; children count for their
# nearest labelled ancestor (vLLM's engine core under the rollout worker).
ROLES = (("ray::Learner", "learner"), ("ray::RolloutWorker", "rollout"),
         ("EngineCore", "rollout"), ("ray::RewardService", "reward"),
         ("ray::", "other ray workers"), ("raylet", "ray system"), ("gcs_server", "ray system"))
OLD = ["train.micro_batch_tokens=4096", "rollout.kv_cache_gb=2", "rollout.vllm_in_process=false",
       "ray.cpu_allocator=glibc"]
GIB = 1 << 30
SMALL = ["model.name=tiny-random", "rollout.engine=hf", "rollout.prompts_per_step=2",
         "rollout.n=2", "rollout.max_new_tokens=8", "reward.num_workers=0", "ray.num_cpus=2"]


def role_of(proc: psutil.Process, driver: int) -> str:
    for p in [proc, *proc.parents()]:
        if p.pid == driver:
            return "driver" if p is proc else "ray system"
        try:
            line = " ".join(p.cmdline()) or p.name()
        except psutil.Error:
            continue
        for key, role in ROLES:
            if key in line:
                return role
    return "ray system"


@dataclass
class Sample:
    peak_rss: float = 0.0
    peak_pss: float = 0.0
    role_peak: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    role_pss: dict[str, float] = field(default_factory=dict)  # each role's PSS at the PSS peak
    learner_cpu: tuple[float, float] = (0.0, 0.0)
    malloc: dict[str, str] = field(default_factory=dict)  # role -> the malloc its process maps


def malloc_of(proc: psutil.Process) -> str:
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    return next((lib for lib in ("tcmalloc", "jemalloc") if f"lib{lib}" in maps), "glibc")


def watch(driver: int, out: Sample, stop: threading.Event) -> None:
    root = psutil.Process(driver)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss, pss, roles, roles_pss = 0.0, 0.0, defaultdict(float), defaultdict(float)
        for p in procs:
            try:
                mem = p.memory_full_info()
                role = role_of(p, driver)
                if role == "learner":
                    cpu = p.cpu_times()
                    out.learner_cpu = (cpu.user, cpu.system)
                if role in ("learner", "rollout") and role not in out.malloc:
                    out.malloc[role] = malloc_of(p)
            except (psutil.Error, OSError):  # gone meanwhile
                continue
            rss, pss = rss + mem.rss, pss + mem.pss
            roles[role] += mem.rss
            roles_pss[role] += mem.pss
        if pss > out.peak_pss:
            out.role_pss = dict(roles_pss)
        out.peak_rss, out.peak_pss = max(out.peak_rss, rss), max(out.peak_pss, pss)
        for role, value in roles.items():
            out.role_peak[role] = max(out.role_peak[role], value)
        stop.wait(0.5)


def run(name: str, overrides: list[str], env: dict[str, str], runs: Path) -> dict:
    cmd = [sys.executable, "-m", "rlft.cli", "train", f"logging.run_dir={runs}",
           f"logging.run_name={name}", *overrides]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    sample, stop = Sample(), threading.Event()
    thread = threading.Thread(target=watch, args=(child.pid, sample, stop), daemon=True)
    thread.start()
    _, err = child.communicate()
    stop.set()
    thread.join()
    if child.returncode:
        raise SystemExit(f"{name} run failed ({child.returncode}):\n{err[-3000:]}")
    steps = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    update = [s["time/update"] for s in steps if "time/update" in s]
    rollout = [s["time/rollout"] for s in steps if "time/rollout" in s]
    print(f"{name}: done in {time.perf_counter() - t0:.0f} s; malloc {sample.malloc}", flush=True)
    return {"wall s": time.perf_counter() - t0, "update s/step": sum(update) / max(len(update), 1),
            "rollout s/step": sum(rollout) / max(len(rollout), 1),
            "peak RSS sum GiB": sample.peak_rss / GIB, "peak PSS sum GiB": sample.peak_pss / GIB,
            "learner user s": sample.learner_cpu[0], "learner system s": sample.learner_cpu[1],
            **{f"  {r} peak RSS GiB": v / GIB for r, v in sorted(sample.role_peak.items())},
            **{f"  {r} PSS at the peak GiB": v / GIB for r, v in sorted(sample.role_pss.items())}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--after-only", action="store_true",
                   help="only today's defaults (a breakdown; no before/after ratio)")
    p.add_argument("--small", action="store_true", help="smoke run: one tiny step each")
    p.add_argument("overrides", nargs="*", help="key=value for both runs")
    ns = p.parse_args()
    if ns.small:
        ns.steps, ns.overrides = 1, [*SMALL, *ns.overrides]
    base = [f"train.steps={ns.steps}", *ns.overrides]
    # The old vLLM-only settings are refused with the transformers engine.
    old = [o for o in OLD if not (o.startswith("rollout.") and "rollout.engine=hf" in base)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        after = run("after", base, {}, runs)
        before = {} if ns.after_only else run("before", base + old, {"RLFT_MALLOC_DEFAULT": "1"},
                                              runs)
    print(f"\n| figure ({ns.steps} steps) | before | after | after / before |\n|---|---|---|---|")
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k.startswith(" "), k)):
        b, a = before.get(key, 0.0), after.get(key, 0.0)
        print(f"| {key} | {b:.2f} | {a:.2f} | {a / b if b else float('nan'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
