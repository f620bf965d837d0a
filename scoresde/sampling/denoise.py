"""Tweedie's formula: the posterior mean of the data given a noisy sample,

    E[x_0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t

(Efron 2011; Song et al. 2021 App. G). It is the exponential integrators' data prediction, the
ancestral step's estimate of x_0, and the final denoising step of `sample` (Jolicoeur-Martineau et
al. 2021), so all three use this module.
"""

from __future__ import annotations

import torch

from ..sdes.base import batch_view


def tweedie(x: torch.Tensor, score: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x0_hat = (x + sigma^2 score) / alpha; alpha and sigma numbers, 0-d tensors, or shaped to broadcast."""
    return (x + sigma ** 2 * score) / alpha


def tweedie_denoise(score_fn, sde, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x + sigma(t)^2 score(x, t)) / alpha(t), per-sample t of shape (B,)."""
    t64 = t.to(torch.float64)
    alpha = batch_view(sde.alpha(t64).to(x.dtype), x)
    sigma = batch_view(sde.sigma(t64).to(x.dtype), x)
    return tweedie(x, score_fn(x, t), alpha, sigma)
