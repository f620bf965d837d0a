"""Sample-quality metrics between two point sets (rows are samples)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from ._checks import check_count as check_steps, check_generator, check_positive_finite


def _as_2d(x, name: str = "x", min_rows: int = 1) -> torch.Tensor:
    """x (a tensor or array of real numbers, rows are samples) as a float64 (N, D) tensor; raise
    naming it if it is not real, not finite, 0-d, or has fewer than min_rows rows."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a tensor or array of samples (rows), got {x!r}")
    if torch.is_tensor(x) and (x.is_complex() or x.dtype == torch.bool or x.device.type == "meta"):
        raise TypeError(f"{name} must hold real numbers, got a {x.dtype} tensor on {x.device}")
    try:
        x = torch.as_tensor(np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or array of real numbers: {err}") from None
    if x.dim() == 0 or x.shape[0] < min_rows or x[0].numel() == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= {min_rows} samples, got {tuple(x.shape)}")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if not bool(finite.all()):
        raise ValueError(f"{name} has NaN or infinite values in rows {(~finite).nonzero().flatten().tolist()[:10]}")
    return x.reshape(x.shape[0], -1)


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance  SW2 = ( E_theta W2^2(theta.x, theta.y) )^(1/2).

    theta uniform on the unit sphere; each 1-D W2 compares quantile functions on a common grid
    (exact for equal sizes: sorted samples paired in order).
    """
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    check_steps("n_projections", n_projections)
    check_generator(generator)
    theta = torch.randn(x.shape[1], n_projections, dtype=torch.float64, generator=generator)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd(x, y, bandwidths=None) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels k(a, b) = exp(-|a-b|^2 / (2 h^2)).

    Default bandwidths: the median pairwise distance of the pooled sample times (0.5, 1, 2).
    """
    x, y = _as_2d(x, "x", min_rows=2), _as_2d(y, "y", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidths is None:
        if not bool((d2 > 0).any()):
            raise ValueError("mmd: all points of x and y coincide, so there is no median distance to set "
                             "the bandwidths from; pass bandwidths=[...]")
        med = d2[d2 > 0].median().sqrt().item()
        bandwidths = [0.5 * med, med, 2 * med]
    elif isinstance(bandwidths, (str, bytes)) or not isinstance(bandwidths, (list, tuple)) or not bandwidths:
        raise TypeError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths!r}")
    else:
        bandwidths = [check_positive_finite("bandwidth", h) for h in bandwidths]
    k = sum(torch.exp(-d2 / (2 * h ** 2)) for h in bandwidths)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def frechet_distance(feat_x, feat_y) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):
    |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2))."""
    fx, fy = _as_2d(feat_x, "feat_x", min_rows=2).numpy(), _as_2d(feat_y, "feat_y", min_rows=2).numpy()
    if fx.shape[1] != fy.shape[1]:
        raise ValueError(f"feat_x and feat_y must have the same dimension, got {fx.shape[1]} and {fy.shape[1]}")
    mx, my = fx.mean(0), fy.mean(0)
    cx, cy = np.atleast_2d(np.cov(fx, rowvar=False)), np.atleast_2d(np.cov(fy, rowvar=False))
    covmean = linalg.sqrtm(cx @ cy)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * covmean))
