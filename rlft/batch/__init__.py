"""Batches: scored rollouts -> `TrainBatch` (collate, advantages), group
filters and round merges, and the epochs x minibatches plan of an update."""
