"""Loading and validating the run configuration: a YAML file plus
`key.sub=value` overrides, checked against the fields of `rlft.config.schema`.

Validation happens before any model is loaded: unknown keys, wrong types and
out-of-range values fail with the field path, the valid choices and a
close-match suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from rlft.config.schema import Config, ConfigError

VALID_LOGGERS = ("console", "jsonl", "wandb", "tensorboard")


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) then `a.b=value` overrides (values parsed as YAML)."""
    raw: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML: {yaml_problem(exc)}; "
                              f"fix that line (a value holding ': ' or '#' needs quotes, "
                              f"indent with spaces)") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
        raw.pop("_run", None)  # provenance in a run folder's config.yaml, not a setting
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({yaml_problem(exc)}); quote it, e.g. key='a: b'") from exc
        _set_dotted(raw, key.strip(), parsed)
    cfg = _build(Config, raw, "")
    _check_cross_fields(cfg)
    return cfg


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where, then what (PyYAML's own spans several).

    >>> try:
    ...     yaml.safe_load("a: b: c")
    ... except yaml.YAMLError as exc:
    ...     print(yaml_problem(exc))
    line 1, column 5: mapping values are not allowed here
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {_join(path, close[0])!r}?" if close else ""
            raise ConfigError(f"unknown config key {_join(path, key)!r}.{hint} "
                              f"Valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], _join(path, name), f.metadata)
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(tp: Any, value: Any, path: str, meta: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else None
        if item is not None and dataclasses.is_dataclass(item):
            return [_build(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return _scalar(tp, value, path, meta)


def _scalar(tp: type, value: Any, path: str, meta: Any) -> Any:
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-6" (no dot) as a string; users mean a number.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[tp]
    if not ok:
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    try:
        value = tp(value)
    except OverflowError as exc:  # an int too large for a float
        raise ConfigError(f"{path}: {str(value)[:20]}... is too large ({exc})") from exc
    if tp is float and math.isnan(value):  # NaN passes every range comparison below
        raise ConfigError(f"{path}: expected a number, got NaN")
    choices = choices_of(meta)
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{path}: {value!r} is not valid.{hint} Choices: {', '.join(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{path}: {value!r} is out of range {bounds}")
    return value


def _check_cross_fields(cfg: Config) -> None:
    for name in cfg.logging.loggers:
        if name not in VALID_LOGGERS:
            raise ConfigError(f"logging.loggers: {name!r} is not valid. "
                              f"Choices: {', '.join(VALID_LOGGERS)}")
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logging.loggers: 'tensorboard' needs the tensorboard package, "
                              "which is not installed: pip install tensorboard (or the extra, "
                              "pip install -e '.[tensorboard]'), or drop it from the list")
    r = cfg.rollout
    if r.mode == "colocated" and r.tensor_parallel_size > 1:
        raise ConfigError(f"rollout.mode=colocated shares one GPU between a rollout worker and "
                          f"a learner rank, so rollout.tensor_parallel_size must be 1 (got "
                          f"{r.tensor_parallel_size}); use rollout.mode=split for tensor parallel")
    t = cfg.train
    if t.minibatches > r.prompts_per_step:
        raise ConfigError(f"train.minibatches={t.minibatches} is more than the "
                          f"{r.prompts_per_step} prompt groups of a step (a minibatch holds whole "
                          f"groups): lower train.minibatches to at most "
                          f"rollout.prompts_per_step={r.prompts_per_step}, or raise the latter")
    _check_async(cfg)
    if not cfg.reward.terms:
        raise ConfigError("reward.terms is empty: name at least one reward, e.g. "
                          "reward.terms=[{name: accuracy}]")


def _check_async(cfg: Config) -> None:
    """train.max_staleness >= 1 overlaps sampling and learning (rlft/run/pipeline.py);
    it resolves algo.rollout_is.mode=auto: tis then, none for the synchronous loop."""
    k, correction = cfg.train.max_staleness, cfg.algo.rollout_is
    if correction.mode == "auto":
        correction.mode = "tis" if k else "none"
        if k:
            logging.getLogger(__name__).info(
                "train.max_staleness=%d: correcting towards the sampling policy with "
                "algo.rollout_is.mode=tis (auto; set mis or tis to choose)", k)
    if k == 0:
        return
    if cfg.rollout.mode == "colocated":
        raise ConfigError(f"train.max_staleness={k} samples while the learner updates, but "
                          "rollout.mode=colocated puts the engines to sleep during the update "
                          "(they share the learners' GPUs); set rollout.mode=split, or "
                          "train.max_staleness=0")
    if cfg.algo.rollout_is.mode == "none":
        raise ConfigError(f"train.max_staleness={k} trains on samples up to {k} policy "
                          "versions old; without a correction they would be trained as if "
                          "on-policy. Leave algo.rollout_is.mode at auto (tis), or set tis or "
                          "mis: the PPO term is then weighted by pi_old / pi_rollout, towards "
                          "the policy that sampled them")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def choices_of(meta: Any) -> tuple:
    """A field's valid values (a registry's names are read now)."""
    choices = meta.get("choices") or ()
    return tuple(choices() if callable(choices) else choices)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(path, default, help) rows for every leaf field: `rlft config` and docs/config-reference.md."""
    rows = []
    for f in dataclasses.fields(cls):
        path = _join(prefix, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, list):
            rows.extend(describe(type(default), path))
        else:
            choices = choices_of(f.metadata)
            listed = f" Choices: {', '.join(map(str, choices))}." if choices else ""
            rows.append((path, repr(default), f.metadata.get("help", "") + listed))
    return rows
