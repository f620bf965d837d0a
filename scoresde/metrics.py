"""Sample-quality metrics between two point sets (rows are samples)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def _as_2d(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x.reshape(x.shape[0], -1)


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance  SW2 = ( E_theta W2^2(theta.x, theta.y) )^(1/2).

    theta uniform on the unit sphere; each 1-D W2 compares quantile functions on a common grid
    (exact for equal sizes: sorted samples paired in order).
    """
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
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
    x, y = _as_2d(x), _as_2d(y)
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidths is None:
        med = d2[d2 > 0].median().sqrt().item()
        bandwidths = [0.5 * med, med, 2 * med]
    k = sum(torch.exp(-d2 / (2 * h ** 2)) for h in bandwidths)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def frechet_distance(feat_x, feat_y) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):
    |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2))."""
    fx, fy = _as_2d(feat_x).numpy(), _as_2d(feat_y).numpy()
    mx, my = fx.mean(0), fy.mean(0)
    cx, cy = np.atleast_2d(np.cov(fx, rowvar=False)), np.atleast_2d(np.cov(fy, rowvar=False))
    covmean = linalg.sqrtm(cx @ cy)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * covmean))
