#!/usr/bin/env bash
# GPU check kit: on one CUDA GPU, with torch but without ray, vllm or datasets,
# runs `pytest -m gpu tests/gpu` and the three GPU benchmarks (bench_weight_sync.py,
# bench_learner.py, bench_grpo_vs_trl.py) inside one time budget (default 465 s)
# and prints one table: each figure next to its goal.
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine
#   GPU_CHECK_SMALL=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#                                                    # CPU smoke run of the kit (--small shapes)
#
# Goals: learner MFU >= 40% on the Qwen2-0.5B shape with a 64k-token micro-batch
# that fits; our GRPO step >= 1.3x faster than TRL's in the same run; weight
# transfer (learner -> engine) <= 0.2 s.
#
# - The repository need not be installed: rlft/ plus the package-dir mappings of
#   pyproject.toml (workers/ -> rlft.workers, rewards/ -> rlft.rewards) are laid
#   out as symlinks in a temporary site folder put first on PYTHONPATH.
# - Wheels in .whl/ at the repository root (TRL and datasets for the TRL column)
#   are installed into a temporary --target folder, offline, without deps.
# - Each part runs under `timeout`; a part that fails or times out is recorded
#   (FAIL/SKIP and why) and the others still run.
# - Writes gpu_check.log (everything), gpu_check_table.md and gpu_check.json into
#   $OUT when OUT is set, else into a temporary folder (printed at the end).
# Exit status: 0 when every part passed or was skipped for a stated reason other
# than a missing GPU, 1 when a part failed, 2 when no CUDA GPU was found.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 465),
# GPU_CHECK_SMALL=1 (CPU smoke run), GPU_CHECK_PARTS (comma list; default
# env,pytest,weight_sync,learner,grpo_vs_trl,learner_no_ckpt; learner_compile is extra).

set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
SMALL=${GPU_CHECK_SMALL:-0}
BUDGET=${GPU_CHECK_BUDGET:-465}
PARTS_WANTED=${GPU_CHECK_PARTS:-env,pytest,weight_sync,learner,grpo_vs_trl,learner_no_ckpt}
T0=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RES=${OUT:-$WORK/out}
mkdir -p "$RES"
PARTS=$WORK/parts.tsv
: > "$PARTS"

elapsed() { echo $(( $(date +%s) - T0 )); }
wanted() { [[ ",$PARTS_WANTED," == *",$1,"* ]]; }

# record NAME STATUS RC SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$PARTS"; }

# run_part NAME CAP RESERVE CMD...: runs CMD under a timeout of CAP seconds, or less
# so that RESERVE seconds of the budget stay for the parts after it.
run_part() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    if ! wanted "$name"; then
        return 0
    fi
    local left=$(( BUDGET - $(elapsed) - reserve )) t=$cap
    (( left < t )) && t=$left
    if (( t < 20 )); then
        echo "== $name: SKIP (only ${left}s of the ${BUDGET}s budget left for it)"
        record "$name" SKIP - 0 "out of time: ${BUDGET}s budget spent"
        return 0
    fi
    echo
    echo "== [$(elapsed)s] $name (timeout ${t}s): $*"
    local start rc
    start=$(date +%s)
    timeout -k 10 "$t" "$@" 2>&1 | tee "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(( $(date +%s) - start ))s"
    record "$name" RAN "$rc" "$(( $(date +%s) - start ))" "timeout ${t}s"
}

# skip_part NAME REASON
skip_part() {
    wanted "$1" && record "$1" SKIP - 0 "$2"
    return 0
}

setup_python_path() {
    # rlft as the package layout of pyproject.toml, without installing it.
    "$PY" - "$REPO" "$WORK/rlft-site" <<'PYEOF' || return 1
import sys
import tomllib
from pathlib import Path

repo, site = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"] \
    .get("package-dir", {})


def real_dir(path: Path, source: Path) -> None:
    """`path` as a real folder of symlinks to the entries of `source`."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "__pycache__" and not (path / entry.name).exists():
            (path / entry.name).symlink_to(entry)


real_dir(site / "rlft", repo / "rlft")
for pkg, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
    parts = pkg.split(".")
    if not pkg or parts[0] != "rlft" or len(parts) < 2:
        continue
    parent = site.joinpath(*parts[:-1])
    if parent.is_symlink():  # a mapped package inside a symlinked one: make it real
        real_dir(parent, parent.resolve())
    target = parent / parts[-1]
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        print(f"  {pkg}: rlft/{'/'.join(parts[1:])} exists in the checkout; kept")
        continue
    target.symlink_to(repo / folder)
    print(f"  {pkg} -> {folder}/")
PYEOF
    export PYTHONPATH="$WORK/rlft-site:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
}

install_wheels() {
    shopt -s nullglob
    local wheels=("$REPO"/.whl/*.whl)
    shopt -u nullglob
    if (( ${#wheels[@]} == 0 )); then
        echo "no wheels in .whl/: TRL's column needs trl + datasets (see the report)"
        return 0
    fi
    echo "installing ${#wheels[@]} wheels from .whl/ into $WORK/site (offline, no deps)"
    local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
               --upgrade --target "$WORK/site")
    if "${pip[@]}" "${wheels[@]}" > "$WORK/pip.log" 2>&1; then
        echo "WHEELS ok: ${wheels[*]##*/}" | tee -a "$WORK/wheels.log"
        return 0
    fi
    tail -3 "$WORK/pip.log"
    local w
    for w in "${wheels[@]}"; do  # one at a time: one bad wheel must not stop the others
        if "${pip[@]}" "$w" > "$WORK/pip.log" 2>&1; then
            echo "WHEELS ok: ${w##*/}"
        else
            echo "WHEELS FAIL: ${w##*/}: $(grep -m1 -E 'ERROR|Error' "$WORK/pip.log")"
        fi
    done | tee -a "$WORK/wheels.log"
}

write_env_probe() {
    # Machine, versions, a bf16 matmul for scale, and every module the parts import.
    cat > "$WORK/env_probe.py" <<'PYEOF'
import importlib
import importlib.metadata as md
import platform
import sys
import time
import traceback

repo, small = sys.argv[1], sys.argv[2] == "1"
t0 = time.perf_counter()
import torch  # noqa: E402

print(f"ENV python: {platform.python_version()} ({sys.executable})")
print(f"ENV torch: {torch.__version__}; CUDA {torch.version.cuda}; "
      f"cudnn {torch.backends.cudnn.version()}; import {time.perf_counter() - t0:.1f}s")
cuda = torch.cuda.is_available()
print(f"ENV cuda_available: {cuda}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"ENV gpu: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"sm_{p.major}{p.minor}, {torch.cuda.device_count()} device(s)")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    tflops = 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12
    print(f"ENV matmul_tflops: {tflops:.0f}")
    del a, b
    torch.cuda.empty_cache()
versions = []
for pkg in ("transformers", "accelerate", "peft", "triton", "pytest", "trl", "datasets",
            "vllm", "ray"):
    try:
        versions.append(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        versions.append(f"{pkg} absent")
print("ENV packages: " + ", ".join(versions))
sys.path[:0] = [f"{repo}/benchmarks", f"{repo}/tests/gpu", f"{repo}/tests"]
for mod in ("rlft", "rlft.workers", "rlft.rewards", "conftest",
            "test_learner_gpu", "test_vllm_gpu", "bench_weight_sync", "bench_learner",
            "bench_grpo_vs_trl", "trl", "datasets"):
    try:
        m = importlib.import_module(mod)
        print(f"IMPORT ok {mod} ({getattr(m, '__file__', '?')})")
    except BaseException as exc:  # pytest's Skipped is not an Exception
        kind = "skip" if type(exc).__name__ == "Skipped" else "FAIL"
        print(f"IMPORT {kind} {mod}: {type(exc).__name__}: {exc}".splitlines()[0])
        if kind == "FAIL" and mod not in ("trl", "datasets"):
            traceback.print_exc(limit=-4)
PYEOF
}

main() {
    echo "gpu_check: $REPO at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)')"
    echo "budget ${BUDGET}s; small=$SMALL; work folder $WORK; results in $RES"
    cd "$REPO" || return 1
    export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
        HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
        TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled \
        HF_HOME="$WORK/hf" RLFT_CACHE="$WORK/rlft-cache" MPLCONFIGDIR="$WORK/mpl"
    command -v nvidia-smi > /dev/null &&
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
            --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /'
    command -v nvidia-smi > /dev/null || echo "nvidia-smi: not found"
    echo "== [$(elapsed)s] setup"
    setup_python_path || echo "setup: could not lay out rlft (pyproject.toml unreadable?)"
    install_wheels
    write_env_probe
    run_part env 90 0 "$PY" "$WORK/env_probe.py" "$REPO" "$SMALL"

    local cuda=0
    grep -q '^ENV cuda_available: True' "$WORK/env.log" 2>/dev/null && cuda=1
    local S=() no_gpu=""
    if (( SMALL )); then
        S=(--small)
    elif grep -q '^ENV cuda_available: False' "$WORK/env.log" 2>/dev/null; then
        no_gpu="no CUDA GPU (torch.cuda.is_available() is False)"
    elif (( ! cuda )); then
        no_gpu="the env probe did not finish (see the env part): torch or CUDA unusable"
    fi

    local pt_timeout=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && pt_timeout=(--timeout 120)
    # Reserves: the least time each later part needs to say something useful.
    if [[ -n $no_gpu ]]; then
        for p in pytest weight_sync learner grpo_vs_trl learner_no_ckpt; do
            skip_part "$p" "$no_gpu"
        done
    elif (( SMALL )); then
        run_part pytest 120 0 "$PY" -P -m pytest -m gpu tests/gpu -p no:cacheprovider -q -ra
        run_part weight_sync 120 0 "$PY" benchmarks/bench_weight_sync.py "${S[@]}" --repeat 2
        run_part learner 180 0 "$PY" benchmarks/bench_learner.py "${S[@]}" --tokens 1024,2048 \
            --warmup 1 --steps 1
        run_part grpo_vs_trl 180 0 "$PY" benchmarks/bench_grpo_vs_trl.py "${S[@]}" --steps 1
        run_part learner_no_ckpt 120 0 "$PY" benchmarks/bench_learner.py "${S[@]}" \
            --tokens 2048 --ckpt off --no-plain --warmup 1 --steps 1
    else
        # pytest: 5 learner tests on small Qwen2s (one compiles); the vLLM file skips.
        run_part pytest 150 260 "$PY" -P -m pytest -m gpu tests/gpu -p no:cacheprovider -q -ra \
            ${pt_timeout[@]+"${pt_timeout[@]}"}
        # Weight transfer, Qwen2-0.5B shape: host and device paths (vLLM absent: skipped).
        run_part weight_sync 90 200 "$PY" benchmarks/bench_weight_sync.py --warmup 1 --repeat 5
        # Learner: 16k and 64k-token micro-batches (grad checkpointing on at 64k), ours and plain.
        run_part learner 150 110 "$PY" benchmarks/bench_learner.py --tokens 16384,65536 \
            --warmup 2 --steps 5
        # One GRPO step, ours vs TRL: 8 prompts x 8 samples, 128 + 256 tokens.
        run_part grpo_vs_trl 180 0 "$PY" benchmarks/bench_grpo_vs_trl.py --prompts 8 --group 8 \
            --prompt-tokens 128 --new-tokens 256 --warmup 1 --steps 3
        # If time is left: the 64k micro-batch without gradient checkpointing (more MFU,
        # more memory).
        run_part learner_no_ckpt 80 0 "$PY" benchmarks/bench_learner.py --tokens 65536 \
            --ckpt off --no-plain --warmup 1 --steps 4
        # Only when named in GPU_CHECK_PARTS: the 64k micro-batch with compiled layers too.
        run_part learner_compile 150 0 "$PY" benchmarks/bench_learner.py --tokens 65536 \
            --compile --no-plain --warmup 2 --steps 3
    fi

    echo
    echo "== [$(elapsed)s] summary"
    cat > "$WORK/summary.py" <<'PYEOF'
import json
import re
import sys
from pathlib import Path

work, res, small, total_s, budget = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", \
    sys.argv[4], sys.argv[5]
parts = {}
for line in (work / "parts.tsv").read_text().splitlines():
    name, status, rc, secs, note = (line.split("\t") + [""] * 5)[:5]
    parts[name] = {"status": status, "rc": rc, "seconds": int(secs or 0), "note": note}


def log(name: str) -> str:
    p = work / f"{name}.log"
    return p.read_text(errors="replace") if p.is_file() else ""


def why(name: str) -> str:
    """The likeliest reason in a failed part's log: its last error line."""
    lines = [x.strip() for x in log(name).splitlines() if x.strip()]
    errs = [x for x in lines if re.search(r"(Error|Exception|error:|FAILED|Killed)", x)
            and not x.startswith("File ")]
    text = (errs or lines or ["(no output)"])[-1]
    return text[:200]


rows = []  # part, status, seconds, measure, value, goal, verdict
goals = {}  # goal -> verdict and what it rests on
status = {}  # part -> PASS / FAIL / SKIP


def part_status(name: str, figure_found: bool) -> tuple[str, str]:
    p = parts[name]
    if p["status"] == "SKIP":
        st, note = "SKIP", p["note"]
    elif p["rc"] in ("124", "137"):
        st, note = "FAIL", f"timed out ({p['note']}); last line: {why(name)}"
    elif p["rc"] != "0":
        st, note = "FAIL", f"exit {p['rc']}: {why(name)}"
    elif not figure_found:
        st, note = "FAIL", f"exit 0 but no figure in its output; last line: {why(name)}"
    else:
        st, note = "PASS", ""
    status[name] = st
    return st, note


def add(part: str, st: str, secs, measure: str, value: str, goal: str = "",
        verdict: str = "") -> None:
    rows.append((part, st, "" if secs in (None, "") else f"{secs} s", measure, value, goal,
                 verdict))


def cmp(value: float | None, goal: float, higher: bool) -> str:
    if value is None:
        return "n/a"
    if small:
        return "n/a (CPU)"
    return "MET" if (value >= goal if higher else value <= goal) else "MISS"


# env
if "env" in parts:
    text = log("env")
    env = dict(re.findall(r"^ENV (\w+): (.*)$", text, re.M))
    st, note = part_status("env", bool(env))
    add("env", st, parts["env"]["seconds"], "GPU",
        env.get("gpu", "none (cuda_available: " + env.get("cuda_available", "?") + ")"))
    add("", "", None, "torch", env.get("torch", note or "?"))
    if "matmul_tflops" in env:
        add("", "", None, "bf16 matmul 8192^3", f"{env['matmul_tflops']} TFLOP/s", "", "info")
    add("", "", None, "packages", env.get("packages", "?"))
    wheels = (work / "wheels.log").read_text() if (work / "wheels.log").is_file() else ""
    for err in re.findall(r"^WHEELS FAIL: (.*)$", wheels, re.M):
        add("", "", None, "wheel not installed", err[:160], "", "info")
    for mod, err in re.findall(r"^IMPORT FAIL (\S+): (.*)$", text, re.M):
        add("", "", None, f"import {mod}", err[:160], "",
            "info" if mod in ("trl", "datasets") else "FAIL")
else:
    env = {}

# pytest -m gpu tests/gpu
if "pytest" in parts:
    text = log("pytest")
    m = None
    for m in re.finditer(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", text, re.M):
        pass
    summary = m.group(1) if m else None
    st, note = part_status("pytest", summary is not None)
    failed = "; ".join(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M))[:300]
    ok = bool(summary) and parts["pytest"]["rc"] == "0" and "passed" in summary \
        and not re.search(r"\d+ (failed|error)", summary)
    verdict = "n/a" if summary is None else "n/a (CPU)" if small else "MET" if ok else "MISS"
    add("pytest -m gpu tests/gpu", st, parts["pytest"]["seconds"], "tests", summary or note,
        "all pass", verdict)
    if failed:
        add("", "", None, "failed", failed)
    elif summary and note:
        add("", "", None, "note", note)
    goals["GPU tests pass"] = verdict + ("" if summary else f" ({note})")

# weight transfer
if "weight_sync" in parts:
    text = log("weight_sync")
    sync = [(p.strip(), *map(float, v)) for p, *v in re.findall(
        r"^\| ([a-z]+, [a-z]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)]
    st, note = part_status("weight_sync", bool(sync))
    secs = parts["weight_sync"]["seconds"]
    if not sync:
        add("bench_weight_sync", st, secs, "transfer", note, "<= 0.2 s", "n/a")
        goals["weight transfer <= 0.2 s"] = f"n/a ({st})"
    for i, (path, g, b, ld, tot) in enumerate(sorted(sync, key=lambda r: r[4])):
        verdict = cmp(tot, 0.2, higher=False)
        add("bench_weight_sync" if i == 0 else "", st if i == 0 else "", secs if i == 0 else None,
            f"transfer, {path} (gather {g:.3f} + bucket {b:.3f} + load {ld:.3f})",
            f"{tot:.3f} s", "<= 0.2 s", verdict)
        if i == 0:
            goals["weight transfer <= 0.2 s"] = f"{verdict} ({path}: {tot:.3f} s)"
    if sync:
        pm = re.search(r"^([\d.]+M parameters.*)$", text, re.M)
        vl = re.search(r"^vllm: (.*)$", text, re.M)
        add("", "", None, "model; vLLM path", (pm.group(1) if pm else "?") + "; vllm: "
            + (vl.group(1) if vl else "measured"))


def learner_rows(text: str) -> list[dict]:
    return [dict(step=step, tokens=int(tok), ckpt=ck, s=s.strip(), tps=tps.strip(),
                 mfu=mfu.strip(), peak=peak.strip())
            for step, tok, ck, s, tps, mfu, peak in re.findall(
                r"^\| (ours\+compile|ours|plain) \| (\d+) \| (on|off) \| ([^|]+) \| ([^|]+) \| "
                r"([^|]+) \| ([^|]+) \|", text, re.M)]


def pct(x: str) -> float | None:
    return float(x[:-1]) if x.endswith("%") else None


best = []  # (MFU, verdict, what) of each "ours" row at the largest budget
for name, label in (("learner", "bench_learner"),
                    ("learner_no_ckpt", "bench_learner, 64k no ckpt"),
                    ("learner_compile", "bench_learner, 64k compile")):
    if name not in parts:
        continue
    text = log(name)
    lr = learner_rows(text)
    st, note = part_status(name, bool(lr))
    secs = parts[name]["seconds"]
    if not lr:
        add(label, st, secs, "MFU", note, ">= 40% at 64k", "n/a")
        continue
    big = max(r["tokens"] for r in lr)
    for i, r in enumerate(lr):
        is_goal = r["step"].startswith("ours") and r["tokens"] == big
        verdict = cmp(pct(r["mfu"]), 40.0, True) if is_goal else "info"
        add(label if i == 0 else "", st if i == 0 else "", secs if i == 0 else None,
            f"MFU {r['step']}, {r['tokens']} tokens, ckpt {r['ckpt']}",
            "OOM (out of GPU memory)" if r["s"] == "OOM" else
            f"{r['mfu']} ({r['s']} s/update, {r['tps']} tok/s, peak {r['peak']} GiB)",
            ">= 40%" if is_goal else "", verdict)
        if is_goal and r["s"] != "OOM":
            best.append((pct(r["mfu"]) or -1.0, verdict,
                         f"{r['mfu']}, {r['tokens']} tokens, ckpt {r['ckpt']}, "
                         f"peak {r['peak']} GiB"))
    for ratio in re.findall(r"^- (\d+ tokens: .*)$", text, re.M):
        if any(r["step"] == "plain" for r in lr):  # --no-plain prints "plain ran out of memory"
            add("", "", None, "ours vs plain", ratio, "", "info")
    if st == "FAIL":
        add("", "", None, "error", note)
if any(p.startswith("learner") for p in parts):
    goals["learner MFU >= 40% at a 64k micro-batch"] = \
        "{1} ({2})".format(*max(best)) if best else "n/a (no 64k row ran)"

# GRPO step, ours vs TRL
if "grpo_vs_trl" in parts:
    text = log("grpo_vs_trl")
    step = re.search(r"^\| \*\*step\*\* \| \*\*([\d.]+)\*\* \| (?:\*\*([\d.]+)\*\*|-) \|",
                     text, re.M)
    ratio = re.search(r"^TRL step time / ours: ([\d.]+)", text, re.M)
    trl_why = re.search(r"^TRL: (.*)$", text, re.M)
    st, note = part_status("grpo_vs_trl", step is not None)
    secs = parts["grpo_vs_trl"]["seconds"]
    if step:
        r = float(ratio.group(1)) if ratio else None
        verdict = cmp(r, 1.3, True)
        value = f"{r:.2f}x (ours {step.group(1)} s, TRL {step.group(2)} s)" if r else \
            f"ours {step.group(1)} s; TRL {trl_why.group(1) if trl_why else 'did not run'}"
        add("bench_grpo_vs_trl", st, secs, "TRL step s / ours", value, ">= 1.3x", verdict)
        for stage, ours, theirs in re.findall(
                r"^\| (rollout|logprobs|reward|advantage|update|sync|other) \| ([\d.]+) \| "
                r"([\d.-]+) \|", text, re.M):
            add("", "", None, f"stage {stage}", f"ours {ours} s, TRL {theirs} s", "", "info")
        goals["GRPO step >= 1.3x TRL's"] = verdict if r else f"n/a (TRL did not run)"
    else:
        add("bench_grpo_vs_trl", st, secs, "TRL step s / ours", note, ">= 1.3x", "n/a")
        goals["GRPO step >= 1.3x TRL's"] = f"n/a ({st})"


def cell(x) -> str:
    return str(x).replace("|", "/").replace("\n", " ")


counts: dict[str, int] = {}
for st in status.values():
    counts[st] = counts.get(st, 0) + 1
out = ["| part | status | time | measure | value | goal | verdict |",
       "| --- | --- | ---: | --- | --- | --- | --- |"]
out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
tail = ["Goals: " + "; ".join(f"{k}: {v}" for k, v in goals.items()),
        "Parts: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"; wall {total_s} s of a {budget} s budget"
        + ("; CPU smoke run (--small): no goal applies" if small else ""),
        "MFU is counted against 989 TFLOP/s (dense bf16 peak of the H100 SXM, the same for "
        "the H200); a micro-batch fits when it ran without OOM (peak GiB shown)."]
table = "\n".join(out + [""] + tail)
print(table)
(res / "gpu_check_table.md").write_text(table + "\n")
(res / "gpu_check.json").write_text(json.dumps(
    {"parts": parts, "status": status, "goals": goals, "env": env,
     "rows": [dict(zip(("part", "status", "time", "measure", "value", "goal", "verdict"), r))
              for r in rows]}, indent=1))
sys.exit(1 if counts.get("FAIL") else 0)
PYEOF
    "$PY" "$WORK/summary.py" "$WORK" "$RES" "$SMALL" "$(elapsed)" "$BUDGET"
    local rc=$?
    echo "results: $RES (gpu_check.log, gpu_check_table.md, gpu_check.json)"
    if [[ -n $no_gpu ]]; then
        return 2
    fi
    if (( rc > 1 )); then  # the summary itself broke: show the raw part records
        echo "summary failed (exit $rc); parts: name, status, exit, seconds, note:"
        cat "$PARTS"
        return 1
    fi
    return $rc
}

main "$@" 2>&1 | tee "$RES/gpu_check.log"
exit "${PIPESTATUS[0]}"
