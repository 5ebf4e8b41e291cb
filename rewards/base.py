"""Registry, the term record, and the value checks shared by every caller."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlft.registry import Registry

REWARDS: Registry[Callable[..., Any]] = Registry("reward")
BUILTIN_MODULES = ("accuracy", "format", "json_structure", "tool_call", "cosine")


def reward(name: str, batched: bool = False) -> Callable:
    """Register a reward function under `name`."""

    def deco(fn: Callable) -> Callable:
        fn.rlft_batched = batched
        return REWARDS.register(name)(fn)

    return deco


def resolve(name: str) -> Callable[..., Any]:
    """A registered built-in or an import path (`file.py:fn`, `pkg.mod:fn`)."""
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"rlft.rewards.{module}")
    return REWARDS.get(name)


@dataclass(frozen=True)
class RewardTerm:
    name: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Metric name: the function name for import paths (`file.py:fn` -> `fn`)."""
        return self.name.rpartition(":")[2]


class InvalidReward(ValueError):
    """A reward returned something that is not a finite float, None or a dict with `total`."""


def normalise(value: Any) -> tuple[float | None, dict[str, float]]:
    """(total or None, components) from a reward's return value, or InvalidReward."""
    if value is None:
        return None, {}
    if isinstance(value, Mapping):
        if "total" not in value:
            raise InvalidReward(f"a dict reward must include 'total'; got keys {sorted(value)}")
        parts = {str(k): _finite(v, f"component {k!r}") for k, v in value.items()}
        return parts.pop("total"), parts
    return _finite(value, "reward"), {}


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InvalidReward(f"{what} must be a number, got {type(v).__name__} {str(v)[:40]!r}")
    v = float(v)
    if not math.isfinite(v):
        raise InvalidReward(f"{what} is {v}")
    return v
