"""Optional dependencies: check at start-up that an extra (pyproject.toml's optional-dependencies)
is installed, so that a run fails before its work rather than after it."""

from __future__ import annotations

import importlib.util


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(modules: tuple[str, ...], extra: str, purpose: str) -> None:
    """Raise MissingExtraError naming `extra` unless every module in `modules` is importable; nothing
    is imported (importlib.util.find_spec only locates the modules)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, which is not installed: "
                                f'pip install -e ".[{extra}]" (or pip install "scoresde[{extra}]")')
