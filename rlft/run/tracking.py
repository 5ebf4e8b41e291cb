"""Metric sinks: console (progress bar + one line per step), JSONL, wandb, TensorBoard.

wandb runs online when a key is configured (WANDB_API_KEY or `wandb login`),
offline otherwise; WANDB_MODE, when set, wins. Keys never reach a sink: the
run config is scrubbed of secret-named fields and of any secret environment
value before wandb or TensorBoard records it. The config carries the run's
provenance (git commit, package versions) from rlft/run/folder.py.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from rlft.run.nothing_to_learn import FlatGroupWatch, remedies
from rlft.types import StepMetrics

# A name with a secret-like part between _ - . separators: WANDB_API_KEY, hf_token,
# db-password. `max_new_tokens` (part `tokens`) is not one.
SECRET_NAME = re.compile(r"(?:^|[_.\-])(?:api_?key|key|token|secret|password|passwd|"
                         r"credentials?)(?:$|[_.\-])", re.IGNORECASE)
REDACTED = "<redacted>"


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
    """One JSON line per step. A resumed run (first_step > 0) first drops the
    records of steps >= first_step: the crashed run logged them, the resumed run
    redoes them, and the file should hold each step once, as it was finally run."""

    def __init__(self, path: Path, first_step: int = 0) -> None:
        if first_step > 0 and path.exists():
            _truncate_steps(path, first_step)
        self.file = open(path, "a", buffering=1)  # line-buffered: a crash loses no step

    def log(self, m: StepMetrics) -> None:
        self.file.write(json.dumps(m.flat()) + "\n")

    def close(self) -> None:
        self.file.close()


def _truncate_steps(path: Path, first_step: int) -> None:
    """Keep the records of steps < first_step, replacing the file atomically (a
    crash here leaves the old file whole). A torn last line (kill -9 mid-write)
    is dropped too."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) < first_step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class WandbSink:
    def __init__(self, project: str, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, name=name, dir=str(run_dir),
                              config=scrub(config), mode=wandb_mode(), resume="allow",
                              id=name.replace("/", "-"))

    def log(self, m: StepMetrics) -> None:
        self.run.log(m.flat(), step=m.step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardSink:
    """Scalars under `<run>/tensorboard/`; the scrubbed config as text at step 0."""

    def __init__(self, run_dir: Path, config: dict[str, Any], first_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's module imports the tensorboard package
            raise ImportError(
                "logging.loggers: 'tensorboard' needs the tensorboard package, which is not "
                "installed. Install it with `pip install tensorboard` (or the extra: "
                "pip install -e '.[tensorboard]'), or drop tensorboard from logging.loggers."
            ) from exc
        # purge_step: a resumed run hides the crashed run's events from first_step on.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=first_step or None)
        if not first_step:  # a resumed run's config text is already there
            text = yaml.safe_dump(scrub(config), sort_keys=False)
            self.writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def log(self, m: StepMetrics) -> None:
        for key, value in m.flat().items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=m.step)
        self.writer.flush()  # a crash loses no step

    def close(self) -> None:
        self.writer.close()


def wandb_mode() -> str:
    """WANDB_MODE if set; else online when a key is configured, offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb() else "offline"


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def scrub(obj: Any, secrets: tuple[str, ...] | None = None) -> Any:
    """A copy of `obj` (nested dicts/lists) without secrets: the value of every
    secret-named key becomes REDACTED, and any secret environment value
    (WANDB_API_KEY, HF_TOKEN, ...) is cut out of every string.

    >>> scrub({"hf_token": "abc", "rollout": {"max_new_tokens": 24}})
    {'hf_token': '<redacted>', 'rollout': {'max_new_tokens': 24}}
    """
    if secrets is None:
        secrets = tuple(v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8)
    if isinstance(obj, dict):
        return {k: REDACTED if SECRET_NAME.search(str(k)) and obj[k] is not None
                else scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, secrets) for v in obj)
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
    return obj


SinkFactory = Callable[[Path, str, str, dict[str, Any], int, int], Sink]
SINKS: dict[str, SinkFactory] = {
    "console": lambda run_dir, name, project, config, total, first: ConsoleSink(total, first),
    "jsonl": lambda run_dir, name, project, config, total, first:
        JsonlSink(run_dir / "metrics.jsonl", first),
    "wandb": lambda run_dir, name, project, config, total, first:
        WandbSink(project, run_dir, name, config),
    "tensorboard": lambda run_dir, name, project, config, total, first:
        TensorBoardSink(run_dir, config, first),
}


def make_sinks(names: list[str], run_dir: Path, run_name: str, project: str,
               config: dict[str, Any], total_steps: int, first_step: int) -> list[Sink]:
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ValueError(f"logging.loggers: {unknown} not known. Choices: {', '.join(SINKS)}")
    sinks: list[Sink] = []
    try:
        for n in names:
            sinks.append(SINKS[n](run_dir, run_name, project, config, total_steps, first_step))
    except BaseException:
        for sink in sinks:  # the ones already open (a wandb run, an open file)
            sink.close()
        raise
    # Always on, not a logger to choose: the warning that a run learns nothing.
    return [*sinks, FlatGroupWatch(remedies=remedies(config))]
