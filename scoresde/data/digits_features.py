"""A small CNN classifier of the 8 x 8 digits whose penultimate layer is the feature space of the
digits Frechet distance (the FID recipe of Heusel et al. 2017 with a domain classifier, as
Inception features mean nothing on 8 x 8 images). Trained by experiments/digits_classifier.py;
inputs are digits mapped to [-1, 1] by `quantized.center` (v + 1/2) * 2 / 17 - 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FEATURE_DIM = 32


class DigitsClassifier(nn.Module):
    """conv 3x3 (16) -> conv 3x3 stride 2 (32) -> linear (FEATURE_DIM) -> linear (10 logits)."""

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images x (B, 1, 8, 8) in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_features(path) -> DigitsClassifier:
    """The trained classifier saved (as a state dict) by experiments/digits_classifier.py."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    net = DigitsClassifier(state["feature_dim"])
    net.load_state_dict(state["model"])
    return net.eval()
