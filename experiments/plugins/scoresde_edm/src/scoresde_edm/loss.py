"""EDM's training loss (Karras et al. 2022, Table 1 and eq. 8) on any kernel SDE.

In EDM's terms x = x_0 + sigma n with the noise level sigma = sigma(t) / alpha(t) of the kernel
x_t = alpha(t) x_0 + sigma(t) n (x = x_t / alpha(t)). The loss is

    L = E_{ln sigma ~ N(P_mean, P_std^2)} E_{x_0, n} [ lambda(sigma) || D(x; sigma) - x_0 ||^2 ],
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,

with D the denoiser (the model's x0 prediction). A drawn sigma is the time with log-SNR -ln sigma,
t = sde.t_of_log_snr(-ln sigma), clipped to (0, T]. Since ||x0_hat - x_0||^2 = sigma^2 ||eps_hat - n||^2,
the weight on the eps error is lambda(sigma) sigma^2 = 1 + sigma^2 / sigma_data^2.

Written in two parts (`SplitLoss`): the body draws the step's labels, sigma and noise once and
returns the `NoisedBatch` whose per_sample runs the denoiser on some rows, so gradient accumulation
and data-parallel training draw once a step.
"""

from __future__ import annotations

import math

import torch
from scoresde.losses import NoisedBatch, SplitLoss, drop_labels, noised_batch


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


@SplitLoss
def edm_loss(model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *, p_mean: float = -1.2,
             p_std: float = 1.2, sigma_data: float = 0.5, p_uncond: float = 0.0,
             generator: torch.Generator | None = None) -> NoisedBatch:
    """EDM's loss (module docstring) per sample, or its batch mean if reduce."""
    for name, value, positive in (("p_mean", p_mean, False), ("p_std", p_std, True), ("sigma_data", sigma_data, True)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and value <= 0):
            raise ValueError(f"{name}={value!r} is not allowed: it must be a finite number{' > 0' if positive else ''}")
    y = drop_labels(y, p_uncond, model.num_classes, generator)
    log_sigma = p_mean + p_std * torch.randn(x0.shape[0], generator=generator, dtype=torch.float64,
                                             device=x0.device)
    t = sde.t_of_log_snr(-log_sigma).clamp(min=torch.finfo(x0.dtype).tiny, max=sde.T).to(x0.dtype)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    noise_level = sigma / alpha  # the sigma of the clipped t
    weight = edm_weight(noise_level, sigma_data) * noise_level ** 2
    return noised_batch(model, x0, noise, alpha, sigma, t, y, weight)
