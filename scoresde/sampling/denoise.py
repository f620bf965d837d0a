"""The final denoising step: Tweedie's formula E[x_0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t
(Efron 2011; Song et al. 2021 App. G, Jolicoeur-Martineau et al. 2021)."""

from __future__ import annotations

import torch

from ..sdes.base import batch_view


def tweedie_denoise(score_fn, sde, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x + sigma(t)^2 score(x, t)) / alpha(t), per-sample t of shape (B,)."""
    t64 = t.to(torch.float64)
    alpha = batch_view(sde.alpha(t64).to(x.dtype), x)
    sigma = batch_view(sde.sigma(t64).to(x.dtype), x)
    return (x + sigma ** 2 * score_fn(x, t)) / alpha
