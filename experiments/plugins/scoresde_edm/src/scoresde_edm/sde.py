"""The schedule of Karras et al. 2022 (EDM, Table 1): sigma(t) = t, s(t) = 1.

As a kernel x_t = alpha(t) x_0 + sigma(t) z this is alpha(t) = 1, sigma(t) = t: time *is* the
noise level. Only the kernel is written; scoresde's KernelSDE derives the rest by autograd,

    f(t) = d log alpha / dt = 0,      g(t)^2 = d sigma^2 / dt - 2 f sigma^2 = 2 t,

so the probability-flow ODE is EDM's  dx/dt = -t grad log p_t(x) = (x - D(x; t)) / t  (EDM eq. 4
with sigma(t) = t). The prior is N(0, sigma_max^2 I) at T = sigma_max.
"""

from __future__ import annotations

import torch
from scoresde import KernelSDE


class EDMSDE(KernelSDE):
    """alpha(t) = 1, sigma(t) = t on (0, sigma_max]."""

    def __init__(self, sigma_max: float = 80.0, N: int = 1000):
        super().__init__(N=N, T=sigma_max)
        self.sigma_max = float(sigma_max)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    # Optional: the log-SNR lambda = -log t has a closed-form inverse. Without this method
    # KernelSDE inverts lambda by bisection, which gives the same grids a little more slowly.
    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.exp(-lam)
