"""Stages an algorithm declares to run before any actor starts
(`Algorithm.stages`), e.g. Self-Rewarding PPO's SFT when it is given no SFT
model. Each kind writes, or on a resumed run reuses, a folder inside the run
folder; the algorithm then points at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlft.algos.contract import Algorithm
from rlft.commands.sft import ensure_sft
from rlft.registry import Registry

# kind -> (run config, folder to write or reuse) -> None
STAGES: Registry[Callable[[Any, Path], None]] = Registry("stage")
STAGES.register("sft")(ensure_sft)


def run_stages(cfg: Any, algo: Algorithm, run_path: Path) -> Algorithm:
    """Run the algorithm's stages in order; returns the algorithm to train."""
    for stage in algo.stages:
        folder = run_path / stage.folder
        STAGES.get(stage.kind)(cfg, folder)
        algo = stage.then(algo, folder)
    return algo
