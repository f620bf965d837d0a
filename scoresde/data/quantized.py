"""Quantized data: the map between integer values and the model's continuous space.

A quantized sample has integer values v in {0, ..., levels - 1}. Training sees uniformly
dequantized data (Theis et al. 2016; Ho et al. 2020, sec. 3.3) mapped affinely to [-1, 1]:

    x = 2 (v + u) / levels - 1,   u ~ U[0, 1)^D.

Then  E_u[log p_x(x)] + D log(2 / levels) <= log P(v)  (Jensen), so with K dequantization draws

    bits/dim = -( mean_k log p_x(x_k) + D log(2 / levels) ) / (D log 2)

is an upper bound on the discrete model's code length; `log_det_jacobian` is the exact
D log(2 / levels) term of the affine map (v + u) -> x.
"""

from __future__ import annotations

import math

import torch


def check_levels(levels) -> int:
    """levels must be an integer >= 2."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} is not allowed: it must be an integer >= 2")
    return levels


def dequantize(v: torch.Tensor, levels: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x = 2 (v + u) / levels - 1 with fresh u ~ U[0, 1) per element; x lies in [-1, 1].

    Computed in float64 and then rounded to `dtype`, so in float32 a point within ~1e-7 of a bin
    edge may round onto it (x = 1 included).
    """
    check_levels(levels)
    u = torch.rand(v.shape, generator=generator, dtype=torch.float64, device=v.device)
    return ((v.to(torch.float64) + u) * (2.0 / levels) - 1.0).to(dtype)


def center(v: torch.Tensor, levels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The deterministic map with u = 1/2: each level to the centre of its bin in [-1, 1]."""
    check_levels(levels)
    return (v.to(dtype) + 0.5) * (2.0 / levels) - 1.0


def to_unit_bins(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of the affine map: v + u = (x + 1) levels / 2, in [0, levels)."""
    check_levels(levels)
    return (x + 1.0) * (levels / 2.0)


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer level of each x in [-1, 1] (clamped): v = floor((x + 1) levels / 2)."""
    return to_unit_bins(x, levels).floor().clamp_(0, levels - 1).to(torch.long)


def log_det_jacobian(levels: int, num_dims: int) -> float:
    """log |d x / d(v + u)| = D log(2 / levels) for x = 2 (v + u) / levels - 1 in D dimensions."""
    check_levels(levels)
    return num_dims * math.log(2.0 / levels)


def bits_per_dim(log_px: torch.Tensor, levels: int, num_dims: int) -> torch.Tensor:
    """bits/dim of dequantized data from per-sample log p_x(x) in nats (module docstring)."""
    return -(log_px + log_det_jacobian(levels, num_dims)) / (num_dims * math.log(2.0))
