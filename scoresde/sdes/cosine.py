"""The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, eq. 17) as a kernel-only SDE.

    alpha(t)^2 = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)),   sigma(t)^2 = 1 - alpha(t)^2.

Only alpha and sigma are given: drift and diffusion come from KernelSDE by autograd, and the
log-SNR inverse by bisection. alpha(1) = 0 makes g(1) infinite, so T defaults to 0.9946, where
lambda(T) is about -5 (the truncation DPM-Solver uses for this schedule).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_finite
from .kernel import KernelSDE
from .vp import MAX_NEG_LOG_ALPHA


class CosineVPSDE(KernelSDE):
    """Kernel-only VP SDE with the cosine schedule. Prior N(0, I)."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, N: int = 1000):
        super().__init__(N=N, T=T)
        self.s = check_positive_finite("s", s, allow_zero=True)
        if not self.T < 1.0:
            raise ValueError(f"T={T!r} is not allowed: the cosine schedule must have 0 < T < 1 (alpha(1) = 0)")
        if self.s > 1:
            raise ValueError(f"s={s!r} is not allowed: the offset must lie in [0, 1] (Nichol & Dhariwal use 0.008)")
        self._tan0 = math.tan(math.pi / 2 * self.s / (1 + self.s))
        # alpha(T) -> 0 as T -> 1; samplers divide by it, and in float32 T rounds to 1 near 1 - 6e-8
        log_alpha_T = float(self.log_alpha(torch.tensor([self.T], dtype=torch.float32)))
        if not -MAX_NEG_LOG_ALPHA <= log_alpha_T:
            raise ValueError(f"T={T!r} is not allowed: it is so close to 1 that alpha(T) = "
                             f"{math.exp(log_alpha_T) if math.isfinite(log_alpha_T) else 0.0:.3g} "
                             f"underflows in float32; use T <= 0.9999 (default 0.9946)")

    def log_alpha(self, t):
        """log(cos(theta0 + d) / cos(theta0)) = log1p(-2 sin^2(d/2) - tan(theta0) sin d), theta0 =
        pi/2 s/(1+s), d = pi/2 t/(1+s): free of the cancellation of log cos - log cos0 near t = 0,
        which in float32 put sigma(1e-8) at 1.8e-4 instead of 2.0e-5."""
        d = (math.pi / 2 / (1 + self.s)) * t
        return torch.log1p(-2 * torch.sin(d / 2) ** 2 - self._tan0 * torch.sin(d))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    @property
    def prior_std(self) -> float:
        return 1.0
