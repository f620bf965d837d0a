"""Sub-VP SDE (Song et al. 2021, eq. 12): the VP drift with a smaller diffusion.

    dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - alpha(t)^4)) dw,
    alpha(t) as for VP,   sigma(t) = 1 - alpha(t)^2   (a std, not a variance: sigma_subVP^2 <= sigma_VP^2).
"""

from __future__ import annotations

import torch

from .kernel import KernelSDE
from .vp import check_beta_range, linear_beta_log_alpha, linear_beta_t_of_log_alpha


class SubVPSDE(KernelSDE):
    """Sub-variance-preserving SDE. Prior N(0, I)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N=N, T=1.0)
        self.beta_min, self.beta_max = check_beta_range(beta_min, beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return linear_beta_log_alpha(t, self.beta_min, self.beta_max)

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    @property
    def prior_std(self) -> float:
        return 1.0

    def t_of_log_snr(self, lam):
        """alpha / (1 - alpha^2) = e^lambda  <=>  1/alpha - alpha = e^-lambda  <=>  log alpha = -asinh(e^-lambda / 2),
        free of cancellation for every lambda; below lambda = -20, asinh(u) = log 2u to 1e-17, i.e. log alpha = lambda."""
        lam64 = lam.to(torch.float64)
        log_alpha = torch.where(lam64 < -20, lam64, -torch.asinh(0.5 * torch.exp(-lam64.clamp(min=-20))))
        return linear_beta_t_of_log_alpha(log_alpha, self.beta_min, self.beta_max).to(lam.dtype)
