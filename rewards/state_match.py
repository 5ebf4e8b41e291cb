"""`state_match`: does the episode end in the state the reference calls leave?

For `rollout.env` runs. The row's `reference_calls` (a list of calls per user
turn) are replayed on a fresh instance of the environment, made from the
row's `env_args`; its end state is compared with the episode's (`state`, which
the rollout fills in). Partial credit: `total` is the fraction of the two
states' leaves (JSON paths) that agree, `exact` is 1 only when all do. The
environment class comes from the term's `env` kwarg, which the run fills in
from `rollout.env` when the term does not give it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rlft.rewards.base import reward


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its path.

    >>> leaves({"accounts": {"Ann": 5, "Bob": [1, 2]}})
    {'accounts.Ann': 5, 'accounts.Bob[0]': 1, 'accounts.Bob[1]': 2}
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(leaves(v, f"{path}.{k}" if path else str(k)))
        return out or {path: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, f"{path}[{i}]"))
        return out or {path: []}
    return {path: value}


def compare(got: Any, want: Any) -> dict[str, float]:
    """`total`: the share of leaves (union of both states') with equal values.

    >>> compare({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    {'total': 0.3333333333333333, 'exact': 0.0}
    """
    g, w = leaves(got), leaves(want)
    paths = set(g) | set(w)
    same = sum(1 for p in paths if p in g and p in w and g[p] == w[p])
    share = same / len(paths) if paths else 1.0
    return {"total": share, "exact": float(same == len(paths))}


_REFERENCE: dict[str, Any] = {}  # reference end state by (env, row, calls), this process


def reference_state(env: str, fields: dict[str, Any], reference_calls: Any) -> Any:
    """The end state the row's reference calls leave, replayed once per row and
    process: the n samples of a prompt share one replay (a user environment's
    methods may be costly)."""
    from rlft.envs.base import env_class, replay

    key = json.dumps([env, fields, reference_calls], sort_keys=True, default=repr)
    if key not in _REFERENCE:
        if len(_REFERENCE) >= 4096:  # a bound, not a policy: rows rarely come back
            _REFERENCE.clear()
        _REFERENCE[key] = replay(env_class(env), fields, reference_calls)
    return _REFERENCE[key]


ABSENT = object()  # no `state` given: the sample is no environment episode


@reward("state_match", reads=("reference_calls",))
def state_match(completion: str, *, state: Any = ABSENT, reference_calls: Any = None,
                env: str | None = None, **fields: Any) -> dict[str, float] | None:
    """The episode's end state against the reference calls' (module docstring); None
    for a row without `reference_calls`, 0 when the episode's state was lost."""
    if reference_calls is None:
        return None
    if not env:
        raise ValueError("state_match needs the environment: run with rollout.env=..., or give "
                         "the term kwargs {env: <class>}")
    if state is ABSENT:
        raise ValueError("state_match scores environment episodes; this sample has no end "
                         "state (run with rollout.env, or check recorded ones with --env)")
    want = reference_state(env, fields, reference_calls)
    if state is None:  # the environment failed: its state died with its process
        return {"total": 0.0, "exact": 0.0}
    return compare(state, want)
