"""Reward functions: plain callables over one sample.

Contract: a reward is called as `fn(completion, *, prompt, **fields)`, where
`fields` are the dataset row's fields (`answer`, `schema`, `tools`,
`demonstration`, any user column); take `**fields` for the ones you ignore.
It returns a float, `None` ("not applicable"), or a dict of named float
components that includes `"total"`.

Register with `@reward("name")`, or point the config at a file or module:
`reward.terms=[{name: my_rewards.py:fn}]`. A `batched=True` reward takes lists
(`completions`, `prompts`, and per-field lists in `fields`) and returns a list;
use it when a model should be loaded once and run on many samples (`cosine`).
Reward files are code and run with your permissions in the reward processes.
"""

from rlft.rewards.base import REWARDS, RewardTerm, resolve, reward

__all__ = ["REWARDS", "RewardTerm", "reward", "resolve"]
