"""Conversions at the edge: other projects' checkpoints and models as scoresde ScoreModels."""

from .score_sde import load_score_sde
