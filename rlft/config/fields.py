"""The field helper of the config schema: `doc` (default, help text, bounds,
choices) and `names_in` (choices read from a registry), and `ConfigError`."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import field
from typing import Any


def names_in(registry: str, *extra: str) -> Callable[[], tuple]:
    """The names of the registry at `module:ATTR`, after `extra`, imported only when
    asked: the registry is the one list of an algorithm's or estimator's names."""
    def names() -> tuple:
        module, _, attr = registry.partition(":")
        return (*extra, *getattr(importlib.import_module(module), attr).names())
    return names


class ConfigError(ValueError):
    """Bad configuration; the message names the field path and the fix."""


def doc(default: Any, help: str, *, choices: tuple | Callable[[], tuple] = (),
        lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field with help text and validation bounds in its metadata;
    `choices` may be a `names_in` of a registry (read when a config is checked)."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        # deep: a shallow copy would share nested sections between every Config made
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)
