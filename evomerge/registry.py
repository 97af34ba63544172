"""A small named registry shared by every extension point.

Merge methods, optimisers, evaluator types, executors, ledgers, search-space
kinds and the zoo's skills each keep one ``Registry``. An implementation joins
in one of three ways, none of which edits code elsewhere:

* a lazy entry ``name -> "module"`` or ``"module:attr"`` declared with the
  registry: the module is imported only when the name is first asked for (so
  ``import evomerge`` stays light and a registry can list names without
  loading torch, Ray or lm-eval);
* ``@registry.decorator(name)`` in a module that is imported anyway;
* a package entry point in the registry's group (``[project.entry-points."evomerge.executors"]``
  in a plugin's ``pyproject.toml``), for implementations outside this package.

Unknown names get "did you mean" and the list of what exists.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from evomerge.errors import EvomergeError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None, *,
                 entry_points: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self._group = entry_points
        self._plugins_read = entry_points is None

    # -- joining -----------------------------------------------------------------------

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered.")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item)

        return wrap

    def declare(self, name: str, target: str) -> None:
        """A lazy entry: ``target`` is ``"module"`` (which registers ``name`` when imported) or
        ``"module:attr"``."""
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered.")
        self._lazy[name] = target

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group):
            if ep.name not in self._items and ep.name not in self._lazy:
                self._lazy[ep.name] = ep.value

    # -- looking up --------------------------------------------------------------------

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        self._read_plugins()
        target = self._lazy.get(name)
        if target is None:
            raise EvomergeError(self.unknown_message(name))
        module, _, attr = target.partition(":")
        loaded = importlib.import_module(module)
        if name not in self._items:  # the module did not register it itself
            if not attr:
                raise EvomergeError(
                    f"{self.kind} {name!r}: importing {module} did not register it; its entry "
                    f"should read 'module:attr'."
                )
            self._items[name] = getattr(loaded, attr)
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(names)}."

    def names(self) -> list[str]:
        """Every name, loaded or not (nothing is imported)."""
        self._read_plugins()
        return sorted(set(self._items) | set(self._lazy))

    def items(self) -> list[tuple[str, T]]:
        """Every implementation, loading the lazy ones."""
        return [(name, self.get(name)) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
