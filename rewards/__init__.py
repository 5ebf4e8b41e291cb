"""Reward functions: plain callables over one sample, and how they compose.

Contract
--------
A reward is called as `fn(completion: str, *, prompt: str, **fields)`, where
`fields` are the dataset row's fields from `Prompt.fields` (`answer`, `schema`,
`tools`, `demonstration`, any user column) merged with the term's `kwargs`
(kwargs win); take `**fields` for the ones you ignore. It returns

- a float,
- `None`: "not applicable" to this sample (e.g. the row has no reference), or
- a dict of named float components that includes `"total"`.

NaN, inf, a string, or a dict without `total` is an *invalid* result; an
exception is a *raised* one; both cost only that sample (see
`rlft.workers.reward.RewardService`).

Registering: `@reward("name")` from `rlft.rewards`; or point the config at a
user file or module, `reward.terms=[{name: my_rewards.py:fn}]` / `pkg.mod:fn`
(no decorator needed). Reward files are code and run with your permissions.
`reads=("answer", ...)` declares the row fields a reward reads: a declared
field that no row has is a warning in `rlft reward check` and `rlft train`,
with the `data.field_map` that would fix it (`rlft.rewards.fields`).

Batched rewards: `@reward("name", batched=True)` marks a function called once
per chunk as `fn(completions: list[str], *, prompts: list[str],
fields: list[dict], **kwargs)` returning one value per completion (float,
`None` or dict each), for work that wants vectors or a model (`cosine`).
`setup=fn` adds a hook called as `fn(**kwargs)` once per reward process before
any call is timed (load a model there, not in the first call).

Composite rewards: a run configures a sequence of
`RewardTerm(name, weight=1.0, kwargs={})`. A sample's reward is the sum of
`weight * total` over the terms that returned a value; a `None` term is skipped
(the others are not renormalised); a sample where every term is `None` gets the
service's `fallback` and is not counted as a failure. Every term is logged in
`ScoredRollouts.components` as `term` (its total) and `term/part` (dict
components), NaN where it did not apply or failed. A term's name is its
registered name or, for import paths, the function name; a repeated name gets
`#2`, `#3`.

Built-ins: `accuracy`, `format`, `json_structure`, `tool_call` (per sample) and
`cosine` (batched). Check any reward on the rows training sees with
`rlft reward check NAME --data FILE [key.sub=value ...]` (or `--config FILE`).
"""

from rlft.rewards.base import REWARDS, InvalidReward, RewardTerm, resolve, reward

__all__ = ["REWARDS", "InvalidReward", "RewardTerm", "reward", "resolve"]
