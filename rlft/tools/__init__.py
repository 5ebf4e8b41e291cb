"""Tools for multi-turn rollouts: plain Python functions the model can call.

`base.py` holds the registry, the `@tool` decorator and the JSON Schema a
function's type hints and docstring give; `builtin.py` the built-in tools
(`calculator`, `lookup`); `call.py` the dispatcher that runs a call inside the
reward service's isolated processes (`rlft.workers.tools.ToolRunner`).
Torch-free, like `rlft.rewards`, so those processes start fast.
"""
