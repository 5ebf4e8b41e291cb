"""What a run asks of the cluster, checked before any actor starts.

Ray queues an actor whose resources no node has, silently and forever; a run
asking for 64 rollout workers or a second GPU would wait until someone noticed.
`check_fits` compares the demand with the nodes' totals and fails in seconds
with one message: the demand, what the cluster holds, the setting to change.

On CPU, actors reserve no CPUs from Ray (workers/placement.py: they take turns
and set their own torch threads), so Ray would start any number of them. The
workers of one phase do run at the same time, though: the CPU demand counts one
core per rollout worker (the rollout phase) and one per learner or critic rank
(the update phase), phase by phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlft.config import ConfigError
from rlft.workers.placement import describe_resources as _fmt


@dataclass(frozen=True)
class Demand:
    """`count` actors, each needing `each` on one node; `setting` sets `count`.
    `phase`: actors of the same phase run at the same time (CPU counting)."""

    role: str
    count: int
    each: dict[str, float]
    setting: str
    phase: str = ""
    cpu_per_actor: float = field(default=0.0)


def check_fits(demands: list[Demand], nodes: list[dict[str, float]]) -> None:
    """Raise ConfigError when the demands cannot all be placed on `nodes` (each
    a node's total resources, as `ray.nodes()` reports them).

    >>> gpu_node = {"CPU": 8, "GPU": 1}
    >>> check_fits([Demand("learner ranks", 1, {"GPU": 1}, "train.learner_workers")], [gpu_node])
    >>> check_fits([Demand("learner ranks", 2, {"GPU": 1}, "train.learner_workers")], [gpu_node])
    Traceback (most recent call last):
    ...
    rlft.config.fields.ConfigError: the run needs 2 GPU (2 learner ranks x 1 GPU); the cluster has 1 GPU on 1 node(s) (8 CPU, 1 GPU); lower train.learner_workers, or add nodes with GPU
    """
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0.0) + value
    held = _fmt(totals)
    for d in demands:  # one actor must fit on one node
        if d.count and not any(_fits(d.each, node) for node in nodes):
            raise ConfigError(
                f"no node can hold one of the {d.role} ({_fmt(d.each)} each, from {d.setting}); "
                f"the {len(nodes)} node(s) have {'; '.join(_fmt(n) for n in nodes)}: lower "
                f"{d.setting}, or start nodes with those resources (`ray start --resources`)")
    for key in sorted({k for d in demands for k in d.each}):
        users = [d for d in demands if d.count and d.each.get(key)]
        need = sum(d.count * d.each[key] for d in users)
        if need > totals.get(key, 0.0) + 1e-9:
            parts = " + ".join(f"{d.count} {d.role} x {d.each[key]:g} {key}" for d in users)
            raise ConfigError(
                f"the run needs {need:g} {key} ({parts}); the cluster has "
                f"{totals.get(key, 0.0):g} {key} on {len(nodes)} node(s) ({held}); lower "
                f"{' or '.join(d.setting for d in users)}, or add nodes with {key}")
    phases = sorted({d.phase for d in demands if d.cpu_per_actor})
    for phase in phases:
        users = [d for d in demands if d.phase == phase and d.cpu_per_actor and d.count]
        need = sum(d.count * d.cpu_per_actor for d in users)
        if need > totals.get("CPU", 0.0) + 1e-9:
            parts = " + ".join(f"{d.count} {d.role}" for d in users)
            raise ConfigError(
                f"the {phase} phase runs {parts} at once, one CPU core each: {need:g} cores, "
                f"but the cluster has {totals.get('CPU', 0.0):g} CPU on {len(nodes)} node(s); "
                f"lower {' or '.join(d.setting for d in users)} to at most "
                f"{math.floor(totals.get('CPU', 0.0))}, or add nodes")


def _fits(each: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in each.items())


def custom(cfg_resources: dict, setting: str) -> dict[str, float]:
    """Validated custom resources from the config (`ray.learner_resources`, ...)."""
    out = {}
    for key, value in dict(cfg_resources).items():
        if key in ("CPU", "GPU", "memory") or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{setting}: {key}={value!r} must be a custom resource name with "
                              "a positive amount, e.g. {trainer: 1} (CPUs and GPUs are set "
                              "by rlft itself)")
        out[str(key)] = float(value)
    return out


def cluster_nodes() -> list[dict[str, float]]:
    """Each live node's total resources."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
