"""Conversions at the edge: scoresde models to and from files, and other projects' models.

Nothing here imports the other project: a converter reads the objects or files it is given.
"""

from __future__ import annotations

from .diffusers import from_diffusers
from .export import load, save_pretrained
from .score_sde import load_score_sde

__all__ = ["save_pretrained", "load", "from_diffusers", "load_score_sde"]
