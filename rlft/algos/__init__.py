"""Pure algorithm library; importing it registers every estimator, loss term,
aggregation mode and schedule kind."""

from rlft.algos import (  # noqa: F401  (registration)
    advantages,
    aggregation,
    logprobs,
    losses,
    schedules,
    self_reward,
)
