"""Bad input, found before Ray or any model starts.

Every command that reads a config (train, sft, eval) runs `check_run` right
after the config loads: model names (a built-in alias, a model folder, or a hub
id that is cached or on a reachable hub), the data source and the splits the
command reads, the reward terms (a user file that does not import fails here,
with its line), and a `--resume` path. Each failure is an `InputError` whose
message is one line naming the input and the fix; `rlft/cli.py` prints it and
exits with status 2. Nothing here loads weights, starts Ray or reads rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rlft.registry import RegistryError

if TYPE_CHECKING:
    from rlft.config import Config
    from rlft.rewards.base import RewardTerm

# The checks import torch, transformers and datasets when they run, not when the
# CLI imports this module for InputError (`rlft config` stays instant).


class InputError(ValueError):
    """An unusable input: the message is one line with the input and the fix."""


def check_run(cfg: Config, splits: Sequence[str], rewards: bool = True,
              resume: str | None = None) -> None:
    """The checks a command over `cfg` needs: its models, `splits` of
    data.source, the reward terms (when the algorithm scores with them and
    `rewards`), the `--resume` path."""
    from rlft.algos.catalogue import build_algorithm
    from rlft.rewards.base import RewardTerm
    from rlft.run.folder import check_resume

    check_model(cfg.model.name, "model.name")
    if cfg.model.ref_name:
        check_model(cfg.model.ref_name, "model.ref_name")
    check_data(cfg.data.source, splits)
    # Self-rewarding scores with a model, not reward.terms (a bad algo.* is a ConfigError).
    if rewards and build_algorithm(cfg).reward_source == "service":
        check_rewards(RewardTerm(t.name, t.weight, dict(t.kwargs)) for t in cfg.reward.terms)
    if resume is not None:
        try:
            check_resume(resume)
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from None


def check_model(name: str, field: str = "model.name") -> None:
    from rlft.models import check_model_name

    try:
        check_model_name(name, field)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None


def check_data(source: str, splits: Iterable[str]) -> None:
    from rlft.data.sources import check_source

    for split in dict.fromkeys(splits):
        try:
            check_source(source, split)
        except (OSError, ValueError) as exc:
            raise InputError(str(exc)) from None


def check_rewards(terms: Iterable[RewardTerm], label: str = "reward.terms") -> None:
    """Each term resolves (a user file is imported here, once) and takes its kwargs."""
    from rlft.rewards.base import load_term
    from rlft.rewards.runner import describe

    for i, term in enumerate(terms):
        where = f"{label}[{i}] ({term.name!r})"
        try:
            load_term(term)
        except (RegistryError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None
        except SyntaxError as exc:
            raise InputError(f"{where}: {os.path.basename(exc.filename or '?')} line "
                             f"{exc.lineno}: {exc.msg}; fix the file") from None
        except Exception as exc:  # noqa: BLE001  (user code failed at import: say where)
            raise InputError(f"{where}: importing it failed: {' '.join(describe(exc).split())}; "
                             f"fix the file or install what it imports") from None
