"""Pure algorithm library; importing it registers every estimator, loss term,
aggregation mode and schedule kind. The algorithms themselves are named in
`rlft.algos.catalogue` (import it for `build_algorithm`)."""

from rlft.algos import (  # noqa: F401  (registration)
    advantages,
    aggregation,
    logprobs,
    losses,
    schedules,
)
