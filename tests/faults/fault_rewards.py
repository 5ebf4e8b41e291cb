"""Reward functions for the fault tests (loaded by path, like a user's file)."""

import time
from pathlib import Path


def flagged_chars(completion: str, *, flag: str = "", delay: float = 0.0, **fields) -> float:
    """Distinct characters / 50, after touching `flag` and sleeping `delay` seconds:
    the test kills the reward actor once the flag shows that a step is scoring."""
    if flag:
        Path(flag).touch()
    time.sleep(delay)
    return len(set(completion)) / 50.0
