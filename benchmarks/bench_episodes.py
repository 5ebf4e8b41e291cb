"""Episode loop vs lockstep: a batch of environment episodes with mixed turn counts
and a slow environment step, on the tiny model (transformers engine, CPU).

    python benchmarks/bench_episodes.py [--episodes 16] [--slow 0.6] [--fast 0.02] [--repeat 3]
    python benchmarks/bench_episodes.py --engine vllm   (SmolLM2 on vLLM: streamed turns too)
    python benchmarks/bench_episodes.py --small     (CI smoke size)

Episode i takes 1 + i % 4 model turns; the environment answers one of its
turns, k = (i // 4) % turns, after `--slow` seconds (an occasional slow call:
a remote API, a test suite), the others after `--fast`; every turn of the
batch has some slow step. Lockstep (`rollout.env_loop=lockstep`) makes every turn wait for the
batch's slowest step; the episode loop (the default) lets a trajectory go on
as soon as its own step is back. Turns stop at the first vowel or space the
random model writes (stop strings), so they are short and real. Prints the
best of `--repeat` wall times for each, their ratio, and the ideal: the
longest single episode (its turns' steps plus one engine call per turn, as
measured alone). With `--engine vllm` the episode loop streams each turn
(workers/vllm_stream.py: a request joins the running batch at the next engine
step); a third row runs it with one `generate` call per ready set instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class Paced:
    """Protocol-form environment: turn k is answered after `row['delays'][k]` seconds;
    the episode ends after the last."""

    def reset(self, row):
        self.delays, self.done = [float(d) for d in row["delays"]], 0
        return None  # keep the row's prompt

    def step(self, message):
        time.sleep(self.delays[self.done])
        self.done += 1
        return [{"role": "user", "content": "Go on."}], None, self.done >= len(self.delays)


def delays(n: int, slow: float, fast: float) -> list[list[float]]:
    return [[slow if k == (i // 4) % (1 + i % 4) else fast for k in range(1 + i % 4)]
            for i in range(n)]


def episodes(n: int, slow: float, fast: float, tok) -> list:
    from rlft.data.prompts import build_prompts

    rows = [{"prompt": f"Say something about the number {i}.", "delays": d}
            for i, d in enumerate(delays(n, slow, fast))]
    return list(build_prompts(rows, tok).prompts)


class Batched:
    """The engine without `stream`: the episode loop then calls `generate` per ready set."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name: str):
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.engine, name)


def run(loop: str, prompts: list, engine, tok, workers: int, repeat: int) -> tuple[float, list]:
    from rlft.envs.host import EnvSettings
    from rlft.types import PromptBatch
    from rlft.workers.episodes import EnvTurns
    from rlft.workers.rollout import SamplingParams
    from rlft.workers.turns import TurnLimits

    params = SamplingParams(max_new_tokens=32, stop=tuple("aeiou "), seed=0)
    ref = f"{Path(__file__).resolve()}:Paced"
    turns = EnvTurns(EnvSettings(ref, num_workers=workers, loop=loop), TurnLimits(5, 400), tok)
    best, ro = float("inf"), None
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            ro = turns.generate(engine, PromptBatch.plain(prompts, n=1), params)
            best = min(best, time.perf_counter() - start)
    finally:
        turns.close()
    return best, [e.steps for e in ro.episodes]


def one_call_s(engine, prompts: list) -> float:
    """One engine call for one short turn (what an episode alone waits per turn)."""
    from rlft.types import PromptBatch
    from rlft.workers.rollout import SamplingParams

    params = SamplingParams(max_new_tokens=32, stop=tuple("aeiou "), seed=0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        engine.generate(PromptBatch.plain(prompts[:1], n=1), params)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--slow", type=float, default=0.6, help="seconds per slow step")
    ap.add_argument("--fast", type=float, default=0.02, help="seconds per fast step")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="8 episodes, slow 0.3 s, 1 repeat")
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                    help="hf: the tiny model; vllm: SmolLM2-135M-Instruct on vLLM")
    ns = ap.parse_args()
    if ns.small:
        ns.episodes, ns.slow, ns.repeat = 8, 0.3, 1
    import torch

    from rlft.models import load_tokenizer, resolve_model
    from rlft.workers.rollout import HFEngine

    torch.set_num_threads(1)
    if ns.engine == "vllm":
        from rlft.workers.vllm_engine import VLLMEngine

        path = resolve_model("smollm2-135m-instruct")
        engine = VLLMEngine(path, seed=0, kv_cache_gb=0.5, max_model_len=1024, in_process=True)
    else:
        path = resolve_model("tiny-random")
        engine = HFEngine(path, seed=0)
    tok = load_tokenizer(path)
    prompts = episodes(ns.episodes, ns.slow, ns.fast, tok)
    g = one_call_s(engine, prompts)
    ideal = max(sum(g + d for d in ds) for ds in delays(ns.episodes, ns.slow, ns.fast))
    lock, lock_steps = run("lockstep", prompts, engine, tok, ns.episodes, ns.repeat)
    ep, ep_steps = run("episode", prompts, engine, tok, ns.episodes, ns.repeat)
    rows = [("lockstep", lock), ("episode" + (", streamed" if ns.engine == "vllm" else ""), ep)]
    if ns.engine == "vllm":
        rows.append(("episode, a generate call per ready set",
                     run("episode", prompts, Batched(engine), tok, ns.episodes, ns.repeat)[0]))
    print(f"{ns.episodes} episodes of 1-4 turns on {ns.engine}, slow step {ns.slow} s, fast "
          f"{ns.fast} s, one engine call {g:.3f} s; environment steps per episode equal: "
          f"{lock_steps == ep_steps}")
    print("| loop | wall (s) | vs lockstep |\n| --- | ---: | ---: |")
    for name, wall in rows:
        print(f"| {name} | {wall:.2f} | {lock / wall:.2f}x |")
    print(f"| ideal (longest episode alone) | {ideal:.2f} | {lock / ideal:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
