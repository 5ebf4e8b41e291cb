"""Typed, validated run configuration: the fields (`schema`) and their loading
(`load`). Every field is documented once, in its `doc(...)` help text, which
`rlft config` and `rlft train --print-config` show."""

from rlft.config.load import describe, load_config, to_dict, to_yaml
from rlft.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError", "describe", "load_config", "to_dict", "to_yaml"]
