"""Name -> factory registries with entry-point discovery, used for SDEs, samplers and guidance.

A registry is filled explicitly (built-ins are listed where the registry is made), by the
`register` decorator, or lazily from an entry-point group of installed distributions, so another
package can add an item without touching scoresde. Plugins are listed without being imported; one
is imported on its first `get`, so a broken plugin fails only when used, with an error naming it.
"""

from __future__ import annotations

import difflib
from importlib.metadata import EntryPoint, entry_points
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
            # a not-yet-imported entry point of that name is the same plugin registering itself
            known = self._items.get(name)
            if known is not None and known is not obj and not isinstance(known, EntryPoint) and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._items[name]!r}); pass overwrite=True to replace it")
            self._items[name] = obj
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        """Note (without importing) every installed plugin of the group; built-ins and explicit
        registrations win over an entry point of the same name."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            self._items.setdefault(ep.name, ep)

    def get(self, name: str):
        """The object registered as `name`; an installed plugin is imported on its first lookup."""
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            known = sorted(self._items)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")
        item = self._items[name]
        if isinstance(item, EntryPoint):
            try:
                item = item.load()
            except Exception as err:
                dist = getattr(item.dist, "name", None) or "an installed package"
                raise ImportError(f"could not load {self.kind} plugin {name!r} = {item.value!r} "
                                  f"(entry point group {self.entry_point_group!r}, from {dist}): "
                                  f"{type(err).__name__}: {err}") from err
            self._items[name] = item
        return item

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items
