"""Conversions at the edge: other projects' models as a scoresde score function and SDE.

Nothing here imports the other project: a converter reads the objects it is given.
"""

from __future__ import annotations

from .diffusers import from_diffusers

__all__ = ["from_diffusers"]
