"""`rollout.env=skyrl_gym:<id>`: a skyrl-gym text environment in the protocol form.

skyrl-gym (optional: `pip install -e ".[envs]"`) environments are made as
`skyrl_gym.make(id, env_config=..., extras=row)` with the row's fields as
`extras` (its `reward_spec`, `extra_info`, ...), answer `init(prompt)` with
the conversation to start from and `step(action_text)` with `observations`
(messages), `reward` and `done`. This adapter maps `reset(row)` to `make` +
`init` (keeping the row's rendered prompt when `init` returns it unchanged)
and `step(message)` to `step(message["content"])`; the end state a reward
reads is the environment's `get_metrics()` plus its turn count. The rewards
skyrl-gym returns from `step` join the sample's reward as the term `env`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

PREFIX = "skyrl_gym:"


def _library() -> Any:
    try:
        import skyrl_gym
    except ImportError as exc:
        raise ImportError(f"rollout.env={PREFIX}...: skyrl-gym is not installed ({exc}); "
                          f"pip install -e '.[envs]'") from None
    return skyrl_gym


@functools.cache
def skyrl_class(env_id: str) -> type:
    """A protocol-form class for skyrl-gym's environment `env_id` (its registry name)."""
    lib = _library()
    from skyrl_gym.envs.registration import registry

    if env_id not in registry:
        raise ValueError(f"rollout.env={PREFIX}{env_id}: skyrl-gym has no environment "
                         f"{env_id!r}; it has {', '.join(sorted(registry))}")

    class SkyRLGym:
        """skyrl-gym's `{env_id}`, one per episode; kwargs are its `env_config`."""

        def __init__(self, **env_config: Any) -> None:
            self.env_config, self.env, self.turns = env_config, None, 0

        def reset(self, row: Mapping[str, Any]) -> list | None:
            extras = {k: v for k, v in row.items() if k != "prompt"}
            self.env = lib.make(env_id, env_config=self.env_config, extras=extras)
            start = row.get("messages") or [{"role": "user", "content": str(row.get("prompt"))}]
            got, _ = self.env.init(list(start))
            return None if got == start else list(got)

        def step(self, message: Mapping[str, Any]) -> tuple[list, float | None, bool]:
            out = self.env.step(str(message.get("content", "")))
            self.turns += 1
            return list(out["observations"] or []), out.get("reward"), bool(out["done"])

        def state(self) -> dict:
            return {"turns": self.turns, **(self.env.get_metrics() if self.env else {})}

    SkyRLGym.__name__ = SkyRLGym.__qualname__ = f"SkyRLGym[{env_id}]"
    return SkyRLGym
