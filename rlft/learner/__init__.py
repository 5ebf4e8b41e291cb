"""The learner's internals: model set-up, process group and FSDP2 sharding,
the micro-batch plan, sequence packing, LoRA, learner checkpoints and the one
loss driver every trainable role uses (workers/learner.py, workers/critic.py)."""
