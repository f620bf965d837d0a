"""Noise-level and class embeddings shared by every network.

A network is conditioned on a per-sample scalar c_noise (chosen by the wrapper as a function of the
log-SNR, see `parametrization.noise_conditioning`) through one of two feature maps:

* Gaussian Fourier features (Tancik et al. 2020; NCSN++, Song et al. 2021 App. H.1):
  gamma(c) = [sin(2 pi W c), cos(2 pi W c)],  W_k ~ N(0, scale^2) fixed at construction;
* sinusoidal positional embedding (Vaswani et al. 2017; DDPM, Ho et al. 2020):
  gamma(c) = [cos(w_k c), sin(w_k c)],  w_k = max_period^(-k / half),  k = 0 .. half - 1.

`ConditioningEmbedding` maps gamma(c_noise) through a two-layer MLP and adds a learned class
embedding; the label `num_classes` is the learned null label used by classifier-free guidance
(Ho & Salimans 2021).
"""

from __future__ import annotations

import math

import torch
from torch import nn

EMBEDDINGS = ("fourier", "sinusoidal")


class GaussianFourierProjection(nn.Module):
    """gamma(c) = [sin(2 pi W c), cos(2 pi W c)] with fixed W ~ N(0, scale^2), output (B, dim)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim={dim} is not allowed: it must be an even integer >= 2")
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * c[:, None] * self.W[None, :].to(c.dtype)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)


class SinusoidalEmbedding(nn.Module):
    """gamma(c) = [cos(w_k c), sin(w_k c)], w_k = max_period^(-k/half), output (B, dim)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim={dim} is not allowed: it must be an even integer >= 2")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c[:, None] * self.freqs[None, :].to(c.dtype)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def noise_features(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """The feature map gamma for `kind` in EMBEDDINGS."""
    if kind == "fourier":
        return GaussianFourierProjection(dim, fourier_scale)
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    raise ValueError(f"unknown embedding {kind!r}; allowed: {', '.join(EMBEDDINGS)}")


class ConditioningEmbedding(nn.Module):
    """emb = MLP(gamma(c_noise)) + E[y]: the vector every block of a network is conditioned on.

    y is a (B,) long tensor of labels in [0, num_classes]; label num_classes (also used when y is
    None) is the learned null label. With num_classes=None the network is unconditional and y must
    be None.
    """

    def __init__(self, features_dim: int, out_dim: int, num_classes: int | None = None,
                 embedding: str = "fourier", fourier_scale: float = 16.0):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes={num_classes!r} is not allowed: use None or an integer >= 1")
        self.num_classes = num_classes
        self.features = noise_features(embedding, features_dim, fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(features_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, out_dim)

    def forward(self, c_noise: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        if c_noise.shape != (batch,):
            raise ValueError(f"c_noise must have shape ({batch},) (one noise level per sample), "
                             f"got {tuple(c_noise.shape)}")
        emb = self.mlp(self.features(c_noise))
        if self.label is None:
            if y is not None:
                raise ValueError("labels y were given to a network built without num_classes; "
                                 "build it with num_classes=K to condition on classes")
            return emb
        return emb + self.label(self.check_labels(y, batch, c_noise.device))

    def check_labels(self, y: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """y as (B,) long labels in [0, num_classes]; None means the null label num_classes."""
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"labels y must be an integer tensor of shape ({batch},), got {y!r}")
        if y.shape != (batch,):
            raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
        if bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"labels y must lie in [0, {self.num_classes}] ({self.num_classes} is the "
                             f"null label), got values {sorted(set(y.tolist()))[:10]}")
        return y.long()
