"""Stateful environments for multi-turn rollouts (`rollout.env`); see `rlft.envs.base`."""

from rlft.envs.base import ENVS, Observation

__all__ = ["ENVS", "Observation"]
