"""The catalogue: algorithm name -> builder, one explicit table.

Algorithm files import the contract (`rlft/algos/contract.py`) only, never
this table, so the library has no import circle. To add an algorithm, write
`rlft/algos/<name>.py` with a `build(cfg) -> Algorithm` and add its line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlft.algos import chord, grpo, ppo, prefix_rft, self_rewarding
from rlft.algos.contract import Algorithm
from rlft.registry import Registry

if TYPE_CHECKING:  # no import at run time: the config imports algorithm names
    from rlft.config import Config

ALGORITHMS: Registry[Callable[[Any], Algorithm]] = Registry("algorithm")
for _name, _build in {
    "grpo": grpo.build,
    "ppo": ppo.build,
    "self_rewarding_ppo": self_rewarding.build,
    "prefix_rft": prefix_rft.build,
    "chord": chord.build,
}.items():
    ALGORITHMS.register(_name)(_build)


def build_algorithm(cfg: Config) -> Algorithm:
    """Resolve `cfg.algo.name` and check the run can use it."""
    algo = ALGORITHMS.get(cfg.algo.name)(cfg)
    if cfg.rollout.n < algo.min_group_size:
        raise ValueError(
            f"rollout.n={cfg.rollout.n} is too small for {algo.name} with the {algo.advantage} "
            f"estimator: set rollout.n >= {algo.min_group_size} (a group needs a baseline)"
        )
    return algo
