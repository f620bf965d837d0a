"""Variance-exploding SDE: the continuous limit of SMLD/NCSN (Song et al. 2021, eq. 9 and App. B).

    dx = sqrt(d sigma(t)^2 / dt) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t,
    g(t)^2 = 2 sigma(t)^2 log(sigma_max / sigma_min),   alpha(t) = 1.

As in Song et al.'s code the kernel std is sigma(t) itself, i.e. x_0 is taken as the data smoothed by
N(0, sigma_min^2) (the exact kernel from unsmoothed data has variance sigma(t)^2 - sigma_min^2).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_data, check_positive_finite
from .kernel import KernelSDE

# sigma^2 (in g^2, in Tweedie's step, in the prior's log-density) must be finite and normal in float32
SIGMA_RANGE = (1e-10, 1e10)


class VESDE(KernelSDE):
    """Continuous SMLD. Prior N(0, sigma_max^2 I)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N=N, T=1.0)
        self.sigma_min = check_positive_finite("sigma_min", sigma_min)
        self.sigma_max = check_positive_finite("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max={sigma_max!r} is not allowed: it must be > sigma_min={sigma_min!r}")
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if not SIGMA_RANGE[0] <= value <= SIGMA_RANGE[1]:
                raise ValueError(f"{name}={value!r} is not allowed: it must lie in [{SIGMA_RANGE[0]:g}, "
                                 f"{SIGMA_RANGE[1]:g}] so that sigma^2 and g^2 stay finite in float32")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def f(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return 2 * self._log_ratio * self.sigma(t) ** 2

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_snr(self, t):
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def t_of_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def discrete_sigmas(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """SMLD's noise levels sigma_i, geometric from sigma_min to sigma_max over N steps."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N,
                                        dtype=dtype, device=device))

    def discretize(self, x, t):
        """SMLD chain x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z (sigma_{-1} = 0): f = 0, G = that std."""
        t = self.check_t(t, check_data("x", x))
        i = (t * (self.N - 1) / self.T).round().long()
        sigmas = self.discrete_sigmas(dtype=x.dtype, device=x.device)
        prev = torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigmas[i] ** 2 - prev ** 2)
