"""Pure algorithm library; importing it registers every estimator and loss term."""

from rlft.algos import advantages, losses  # noqa: F401  (registration)
