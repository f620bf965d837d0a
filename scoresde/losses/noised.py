"""A batch noised by the kernel, x_t = alpha x0 + sigma eps, and its weighted denoising error.

The per-step part of the denoising losses (dsm, ddpm, smld, vdm, EDM's): given the step's draws,
`noised_batch` forms x_t, the regression target of the model's parametrization and the weight,
once; `NoisedBatch.per_sample(forward, lo, hi)` runs the network on rows lo:hi and returns

    offset + weight ||eps_hat - eps||^2   per sample,

computed in the model's own parametrization (residual pred - target times `eps_error_scale`), so no
conversion amplifies rounding errors; a loss on another scale, e.g. ||x0_hat - x0||^2 =
(sigma/alpha)^2 ||eps_hat - eps||^2, is a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.parametrization import eps_error_scale, target
from ..sdes.base import batch_view


@dataclass(frozen=True)
class NoisedBatch:
    """x_t (B, ...), t (B,), labels y (B,) or None, the target (B, ...) of the prediction, and per-sample
    weight on ||pred - target||^2 and offset (B,); `per_sample` gives rows lo:hi's losses."""

    x_t: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    target: torch.Tensor
    weight: torch.Tensor
    offset: torch.Tensor | None = None

    def per_sample(self, forward, lo: int, hi: int) -> torch.Tensor:
        y = None if self.y is None else self.y[lo:hi]
        residual = forward(self.x_t[lo:hi], self.t[lo:hi], y) - self.target[lo:hi]
        error = self.weight[lo:hi] * residual.flatten(1).pow(2).sum(1)
        return error if self.offset is None else self.offset[lo:hi] + error


def noised_batch(model, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 t: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor,
                 offset: torch.Tensor | None = None) -> NoisedBatch:
    """The NoisedBatch of x0 at times t (alpha, sigma: the kernel's at t, shape (B,)) with the given
    noise, whose per-sample loss is offset + weight ||eps_hat - eps||^2 for model's parametrization."""
    x_t = batch_view(alpha, x0) * x0 + batch_view(sigma, x0) * noise
    p = model.parametrization
    return NoisedBatch(x_t, t, y, target(p, x0, noise, alpha, sigma), weight * eps_error_scale(p, alpha, sigma) ** 2,
                       offset)


def weighted_error(model, x0, noise, alpha, sigma, t, y, weight):
    """weight * ||eps_hat - eps||^2 per sample at x_t = alpha x0 + sigma noise (module docstring), with
    model run on the whole batch: the plain form, for a loss without a per-step part."""
    return noised_batch(model, x0, noise, alpha, sigma, t, y, weight).per_sample(model, 0, x0.shape[0])
