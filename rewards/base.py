"""Registry, the term record, signature checks, and the value checks every caller shares.

Torch-free on purpose: reward processes import this module, and a fresh
process should start in milliseconds, not the second torch takes.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlft.registry import Registry

REWARDS: Registry[Callable[..., Any]] = Registry("reward", builtins="rlft.rewards")
# Row fields a reward reads: names, inner tuples of alternatives, or a function of its kwargs.
Reads = tuple[str | tuple[str, ...], ...] | Callable[..., tuple]


class InvalidReward(ValueError):
    """A reward returned something other than a finite number, None, or a dict with 'total'."""


def reward(name: str | None = None, *, batched: bool = False,
           setup: Callable[..., Any] | None = None, reads: Reads = ()) -> Callable:
    """Mark a function as a reward; with a `name`, register it under that name.

    `batched=True` means the function scores many samples in one call:
    `fn(completions: list[str], *, prompts: list[str], fields: list[Mapping],
    **kwargs) -> list` with one entry (float, None or dict) per completion.
    Use it when a call has a fixed cost worth sharing, such as an encoder.
    `setup(**kwargs)` runs once per reward process before any call is timed
    (load models there, so the first call does not hit the time limit).
    `reads` names the row fields the reward reads, e.g. `("answer", "schema")`;
    an inner tuple means "any one of these", and a function of the term's
    kwargs returning such a tuple serves a reward whose kwargs pick the field.
    `rlft reward check` and `rlft train` warn when a declared field is in no
    row (`rlft.rewards.fields`), naming the `data.field_map` that would fix it.
    """
    if not callable(reads):
        check_reads(reads, name or "reward")

    def deco(fn: Callable) -> Callable:
        fn.rlft_batched = batched
        fn.rlft_setup = setup
        fn.rlft_reads = reads
        return REWARDS.register(name)(fn) if name else fn

    return deco


def check_reads(reads: Any, where: str) -> tuple[tuple[str, ...], ...]:
    """`reads` as groups of alternative field names, or a TypeError naming `where`.

    >>> check_reads(("schema", ("answer", "demonstration")), "cosine")
    (('schema',), ('answer', 'demonstration'))
    """
    groups = tuple((r,) if isinstance(r, str) else r for r in reads) \
        if isinstance(reads, (tuple, list)) else None
    if groups is None or not all(isinstance(g, (tuple, list)) and g
                                 and all(isinstance(f, str) for f in g) for g in groups):
        raise TypeError(f"{where}: reads must be a tuple of row field names (an inner tuple: "
                        f"any one of them), e.g. reads=(\"answer\", \"schema\"); got {reads!r}")
    return tuple(tuple(g) for g in groups)


def declared_reads(fn: Callable, kwargs: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    """The row fields `fn` declared it reads, for a term with these kwargs (none undeclared)."""
    reads, name = getattr(fn, "rlft_reads", ()), getattr(fn, "__name__", "reward")
    if callable(reads):
        try:
            reads = reads(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}: its reads function must take the term's kwargs "
                            f"({sorted(kwargs)}); add **kwargs to it ({exc})") from exc
    return check_reads(reads, name)


def is_batched(fn: Callable) -> bool:
    return bool(getattr(fn, "rlft_batched", False))


def run_setup(fn: Callable, kwargs: Mapping[str, Any]) -> None:
    """Call `fn`'s setup hook, if it has one, with the term's kwargs."""
    hook = getattr(fn, "rlft_setup", None)
    if hook is not None:
        hook(**kwargs)


def term_labels(terms: list[RewardTerm]) -> list[str]:
    """Metric names per term; a repeated name gets `#2`, `#3` so no component is overwritten.

    >>> term_labels([RewardTerm("accuracy"), RewardTerm("my.py:acc"), RewardTerm("accuracy")])
    ['accuracy', 'acc', 'accuracy#2']
    """
    seen: dict[str, int] = {}
    out = []
    for t in terms:
        seen[t.label] = seen.get(t.label, 0) + 1
        out.append(t.label if seen[t.label] == 1 else f"{t.label}#{seen[t.label]}")
    return out


def resolve(name: str) -> Callable[..., Any]:
    """A registered built-in or an import path (`file.py:fn`, `pkg.mod:fn`)."""
    fn = REWARDS.get(name)
    if not callable(fn):
        raise TypeError(f"reward {name!r} resolves to a {type(fn).__name__}, not a function")
    return fn


@dataclass(frozen=True)
class RewardTerm:
    """One weighted term of the total reward (`reward.terms[i]` in the config)."""

    name: str  # built-in name or import path
    weight: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # passed to every call

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"RewardTerm.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real) \
                or not math.isfinite(self.weight):
            raise ValueError(f"RewardTerm {self.name!r}: weight must be a finite number, "
                             f"got {self.weight!r}")
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise ValueError(f"RewardTerm {self.name!r}: kwargs must map names to values, "
                             f"got {self.kwargs!r}")

    @property
    def label(self) -> str:
        """Metric name: the function name for import paths (`file.py:fn` -> `fn`)."""
        return self.name.rpartition(":")[2]


def load_term(term: RewardTerm) -> Callable[..., Any]:
    """Resolve `term` and check that its function accepts the term's kwargs."""
    fn = resolve(term.name)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins and C functions have no signature
        return fn
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn
    needed = ("prompts", "fields") if is_batched(fn) else ("prompt",)
    for key in (*needed, *term.kwargs):
        if key not in params or params[key].kind is params[key].POSITIONAL_ONLY:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"reward {term.name!r} takes no keyword {key!r}.{hint} A reward is called as "
                f"fn(completion, *, prompt, **fields) and should take **kwargs for row fields "
                f"it ignores; check reward.terms[...].kwargs."
            )
    return fn


def normalise(value: Any) -> tuple[float | None, dict[str, float]]:
    """(total or None, components) from a reward's return value, else InvalidReward.

    >>> normalise(1)
    (1.0, {})
    >>> normalise({"total": 0.5, "parsed": 1.0})
    (0.5, {'parsed': 1.0})
    >>> normalise(float("nan"))
    Traceback (most recent call last):
    ...
    rlft.rewards.base.InvalidReward: reward is nan
    """
    if value is None:
        return None, {}
    if isinstance(value, Mapping):
        if "total" not in value:
            raise InvalidReward(f"a dict reward must include 'total'; got keys {sorted(value)}")
        parts = {str(k): _finite(v, f"component {k!r}") for k, v in value.items()}
        return parts.pop("total"), parts
    return _finite(value, "reward"), {}


def _finite(v: Any, what: str) -> float:
    if not isinstance(v, numbers.Real):  # bool is a Real: True scores 1.0
        raise InvalidReward(f"{what} must be a number, got {type(v).__name__} {str(v)[:40]!r}; "
                            f"return a float, None, or a dict with 'total'")
    v = float(v)
    if not math.isfinite(v):
        raise InvalidReward(f"{what} is {v}")
    return v
