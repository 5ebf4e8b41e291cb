"""One small generic registry, used for estimators, losses, rewards, engines.

A name is either registered (`@ADVANTAGES.register("grpo")`) or, for user
code, an import path: `package.module:function` or `path/to/file.py:function`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Lookup failure; the message names the valid choices."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Names of one kind. `builtins`: the package whose modules register the
    built-in entries; every module in it is imported at the first lookup, so a
    new built-in is its own file and is listed nowhere else."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind, self.builtins = kind, builtins
        self._items: dict[str, T] = {}

    def _discover(self) -> None:
        package, self.builtins = self.builtins, None  # once (and not again from inside)
        if package is not None:
            for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._discover()
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_import_path(name)  # type: ignore[return-value]
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(sorted(self._items))}"
            f" (or an import path 'pkg.module:fn' / 'file.py:fn')."
        )

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def load_import_path(spec: str) -> object:
    """Resolve `pkg.mod:attr` or `some/file.py:attr`, with errors that say what to fix."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RegistryError(f"import path {spec!r} must look like 'pkg.module:name' or 'file.py:name'")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise RegistryError(f"import path {spec!r}: file {str(path)!r} does not exist")
        mod_name = f"rlft_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert file_spec is not None and file_spec.loader is not None
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[mod_name] = module
            try:
                file_spec.loader.exec_module(module)
            except BaseException:
                # Not cached half-run: the next lookup must raise the same error again.
                del sys.modules[mod_name]
                raise
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RegistryError(f"import path {spec!r}: cannot import {target!r} ({exc})") from exc
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise RegistryError(
            f"import path {spec!r}: {target!r} defines no {attr!r}. It defines: {', '.join(public)}"
        )
    return getattr(module, attr)
