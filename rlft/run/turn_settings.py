"""Multi-turn settings from the config: `rollout.tools` and `rollout.env`, checked
before any actor starts (a name that does not load, a class without tools)."""

from __future__ import annotations

import json
from typing import Any

from rlft.config import Config, ConfigError
from rlft.envs.base import env_class, is_protocol, method_schemas
from rlft.envs.host import EnvSettings
from rlft.registry import RegistryError
from rlft.tools.base import load_tools
from rlft.workers.tools import ToolSettings


def env_settings(cfg: Config) -> EnvSettings:
    """`rollout.env` and its limits; a class that cannot be loaded or offers no tools
    fails here, before any actor starts."""
    r = cfg.rollout
    if r.tools:
        raise ConfigError("rollout.env and rollout.tools are both set; an environment's tools "
                          "are its methods: drop rollout.tools")
    try:
        cls = env_class(r.env)
        if not is_protocol(cls):
            method_schemas(cls)
    except (RegistryError, TypeError, ValueError, ImportError) as exc:
        raise ConfigError(f"rollout.env={r.env!r}: {exc}") from exc
    return EnvSettings(r.env, r.env_timeout_s, r.env_memory_mb, r.tool_max_chars, r.env_workers,
                       r.max_turns, r.max_total_tokens, r.env_loop)


def tool_settings(cfg: Config) -> ToolSettings:
    """`rollout.tools` and its limits for the rollout workers; a tool that cannot be
    loaded (name, path, type hints) fails here, before any actor starts."""
    r = cfg.rollout
    try:
        load_tools(list(r.tools))
    except (RegistryError, TypeError, ValueError) as exc:
        raise ConfigError(f"rollout.tools: {exc}") from exc
    return ToolSettings(tuple(r.tools), r.max_turns, r.max_total_tokens, r.tool_timeout_s,
                        r.tool_max_chars)


def with_env_tools(cfg: Config, rows: Any) -> Any:
    """Rows of a method-form `rollout.env` without their own `tools` get the class's,
    so the prompt shows the model what it can call."""
    if not cfg.rollout.env or "tools" in rows.column_names:
        return rows
    cls = env_class(env_settings(cfg).ref)
    if is_protocol(cls) and not getattr(cls, "tools", None):
        return rows
    return rows.add_column("tools", [json.dumps(method_schemas(cls))] * len(rows))
