"""Conversions at the edge: scoresde models to and from files and other projects' models."""

from __future__ import annotations

from .export import load, save_pretrained

__all__ = ["save_pretrained", "load"]
