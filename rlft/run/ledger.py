"""The run's ledger of trained samples: `<run>/trained.jsonl`, one line per step.

A line names the sampler draws whose samples the step trained (draw index g =
epoch * N + position, `PromptSampler.drawn`; sample j of draw g is sample uid
`g/j`), the draws it consumed without training them (DAPO's filter, a batch
dropped for staleness), the policy version that sampled them and the one they
trained. A resume first drops the lines of the steps it redoes (those updates
died with the process), so across kills and resumes the file holds every step
once: a prompt skipped or trained twice shows as a gap or a repeat.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rlft.run.pipeline import Collected
from rlft.types import Prompt

NAME = "trained.jsonl"


class Ledger:
    def __init__(self, run_dir: Path, first_step: int) -> None:
        self.path = run_dir / NAME
        keep = [rec for rec in read(self.path) if rec["step"] < first_step]
        self.path.write_text("".join(json.dumps(rec) + "\n" for rec in keep))

    def record(self, step: int, trained_version: int, item: Collected,
               prompt_at: Callable[[int], Prompt], dropped: tuple[int, ...] = ()) -> None:
        uids = item.trained_uids
        trained = [g for g in item.draws if prompt_at(g).uid in uids]
        rec = {"step": step, "sampled_version": item.version, "trained_version": trained_version,
               "draws": trained, "uids": [prompt_at(g).uid for g in trained],
               "filtered": [g for g in item.draws if g not in set(trained)],
               "dropped_stale": list(dropped), "samples": len(item.kept.rollouts)}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def read(path: Path) -> list[dict]:
    """The ledger's records; a line cut short by a kill mid-write is left out.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / NAME
    >>> _ = p.write_text('{"step": 0, "draws": [0, 1]}\\n{"step": 1, "dr')
    >>> [r["step"] for r in read(p)]
    [0]
    """
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only a killed writer's last line may be cut short
                raise ValueError(f"{path}: line {i + 1} is not JSON; the ledger is damaged "
                                 "(move it away to start a new one)") from None
    return out
