"""A run: wiring actors from the config, the weight push, pre-training stages,
the run folder, checkpoints and metric sinks."""
