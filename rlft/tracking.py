"""Metric sinks: console (progress bar + one line per step), JSONL, wandb.

wandb runs offline unless the user has configured a key (WANDB_API_KEY or
`wandb login`); the key itself is never printed or written to the run folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from rlft.types import StepMetrics

SECRET_ENV = ("WANDB_API_KEY",)


class Sink(Protocol):
    def log(self, m: StepMetrics) -> None: ...
    def close(self) -> None: ...


class ConsoleSink:
    def __init__(self, total_steps: int, first_step: int = 0) -> None:
        self.bar = tqdm(total=total_steps, initial=first_step, desc="train", unit="step",
                        file=sys.stderr, dynamic_ncols=True)

    def log(self, m: StepMetrics) -> None:
        parts = [f"step {m.step:>4}", f"reward {m.reward_mean:.3f}±{m.reward_std:.3f}"]
        parts += [f"{k} {v:.3f}" for k, v in m.reward_components.items()]
        parts += [f"len {m.response_len_mean:.1f}", f"loss {m.loss:+.4f}",
                  f"kl {m.kl:.4f}", f"ent {m.entropy:.3f}", f"clip {m.clip_frac:.3f}",
                  f"gnorm {m.grad_norm:.3f}", f"tok/s {m.tokens_per_s:.0f}"]
        if m.reward_failures.total:
            parts.append(f"reward_failures {m.reward_failures.total}")
        times = " ".join(f"{k} {v:.1f}s" for k, v in m.stage_seconds.items())
        self.bar.write(" | ".join(parts) + f" | {times}")
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{m.reward_mean:.3f}")

    def close(self) -> None:
        self.bar.close()


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # line-buffered: a crash loses no step

    def log(self, m: StepMetrics) -> None:
        self.file.write(json.dumps(m.flat()) + "\n")

    def close(self) -> None:
        self.file.close()


class WandbSink:
    def __init__(self, project: str, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        online = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config,
                              mode="online" if online else "offline", resume="allow",
                              id=name.replace("/", "-"))

    def log(self, m: StepMetrics) -> None:
        self.run.log(m.flat(), step=m.step)

    def close(self) -> None:
        self.run.finish()


def _netrc_has_wandb() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def make_sinks(names: list[str], run_dir: Path, run_name: str, project: str,
               config: dict[str, Any], total_steps: int, first_step: int) -> list[Sink]:
    sinks: list[Sink] = []
    for name in names:
        if name == "console":
            sinks.append(ConsoleSink(total_steps, first_step))
        elif name == "jsonl":
            sinks.append(JsonlSink(run_dir / "metrics.jsonl"))
        elif name == "wandb":
            sinks.append(WandbSink(project, run_dir, run_name, config))
    return sinks
