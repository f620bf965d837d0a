"""Name -> factory registries with entry-point discovery, used for SDEs, samplers and guidance.

A registry is filled explicitly (built-ins are listed where the registry is made), by the
`register` decorator, or lazily from an entry-point group of installed distributions, so another
package can add an item without touching scoresde.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Callable


class Registry:
    """A mapping name -> object, with plugins found through `entry_point_group` on first lookup."""

    def __init__(self, kind: str, entry_point_group: str, builtins: dict | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, object] = dict(builtins or {})
        self._entry_points_loaded = False

    def register(self, name: str, *, overwrite: bool = False) -> Callable:
        """Class/function decorator: `@registry.register("name")`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj):
            if name in self._items and self._items[name] is not obj and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._items[name]!r}); pass overwrite=True to replace it")
            self._items[name] = obj
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str):
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            known = sorted(self._items)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")
        return self._items[name]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items
