"""Quantized data: the map between integer values and the model's continuous space.

A quantized sample has integer values v in {0, ..., levels - 1}. Training sees uniformly
dequantized data (Theis et al. 2016; Ho et al. 2020, sec. 3.3) mapped affinely to a data range
(lo, hi), [-1, 1] by default (what scoresde.data trains on):

    x = lo + (hi - lo) (v + u) / levels,   u ~ U[0, 1)^D.

Then  E_u[log p_x(x)] + D log((hi - lo) / levels) <= log P(v)  (Jensen), so with K dequantization draws

    bits/dim = -( mean_k log p_x(x_k) + D log((hi - lo) / levels) ) / (D log 2)

is an upper bound on the discrete model's code length; `log_det_jacobian` is the exact
D log((hi - lo) / levels) term of the affine map (v + u) -> x. This module is the one place for
that map, its log-determinant and the bits/dim formula: `scoresde.likelihood.bits_per_dim` (the
estimate for a score model) and the VDM loss use them.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_levels(levels) -> int:
    """levels must be an integer >= 2."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} is not allowed: it must be an integer >= 2")
    return levels


def check_data_range(data_range) -> tuple[float, float]:
    """data_range must be a pair (lo, hi) of finite numbers with lo < hi and hi - lo finite."""
    if (not isinstance(data_range, (tuple, list)) or len(data_range) != 2
            or not all(isinstance(a, numbers.Real) and not isinstance(a, bool) for a in data_range)):
        raise TypeError(f"data_range must be a pair of numbers (lo, hi), got {data_range!r}")
    lo, hi = (float(a) for a in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo and math.isfinite(hi - lo)):
        raise ValueError(f"data_range={data_range!r} is not allowed: it must be (lo, hi) with lo < hi, "
                         f"both finite and hi - lo finite")
    return lo, hi


def dequantize(v: torch.Tensor, levels: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """x = lo + (hi - lo)(v + u) / levels with fresh u ~ U[0, 1) per element; x lies in [lo, hi].

    u is drawn on the generator's device (v's without one) and x computed in float64, then rounded
    to `dtype`, so in float32 a point within ~1e-7 of a bin edge may round onto it (x = hi included).
    """
    check_levels(levels)
    lo, hi = check_data_range(data_range)
    device = generator.device if generator is not None else v.device
    u = torch.rand(v.shape, generator=generator, dtype=torch.float64, device=device).to(v.device)
    return (lo + (v.to(torch.float64) + u) * ((hi - lo) / levels)).to(dtype)


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


def log_det_jacobian(levels: int, num_dims: int, data_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """log |d x / d(v + u)| = D log((hi - lo) / levels) for x = lo + (hi - lo)(v + u) / levels in D dimensions."""
    check_levels(levels)
    lo, hi = check_data_range(data_range)
    return num_dims * math.log((hi - lo) / levels)


def log_p_to_bits_per_dim(log_px: torch.Tensor, levels: int, num_dims: int,
                 data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """bits/dim of dequantized data from per-sample log p_x(x) in nats (module docstring)."""
    return -(log_px + log_det_jacobian(levels, num_dims, data_range)) / (num_dims * math.log(2.0))
