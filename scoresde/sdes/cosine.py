"""The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, eq. 17) as a kernel-only SDE.

    alpha(t)^2 = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)),   sigma(t)^2 = 1 - alpha(t)^2.

Only alpha and sigma are given: drift and diffusion come from KernelSDE by autograd, and the
log-SNR inverse by bisection. alpha(1) = 0 makes g(1) infinite, so T defaults to 0.9946, where
lambda(T) is about -5 (the truncation DPM-Solver uses for this schedule).
"""

from __future__ import annotations

import math

import torch

from .base import check_positive_finite
from .kernel import KernelSDE


class CosineVPSDE(KernelSDE):
    """Kernel-only VP SDE with the cosine schedule. Prior N(0, I)."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, N: int = 1000):
        super().__init__(N=N, T=T)
        self.s = check_positive_finite("s", s, allow_zero=True)
        if not self.T < 1.0:
            raise ValueError(f"T={T!r} is not allowed: the cosine schedule must have 0 < T < 1 (alpha(1) = 0)")
        self._log_cos0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def log_alpha(self, t):
        return torch.log(torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_cos0

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    @property
    def prior_std(self) -> float:
        return 1.0
