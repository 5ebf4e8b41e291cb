"""CLI commands beside `rlft train`: sft, eval, export, reward check."""
