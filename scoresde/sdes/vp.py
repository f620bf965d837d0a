"""Variance-preserving SDE: the continuous limit of DDPM (Song et al. 2021, eq. 11 and App. B).

    dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min),
    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,   sigma(t)^2 = 1 - alpha(t)^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_data, check_positive_finite
from .base import batch_view
from .kernel import KernelSDE


# Largest -log alpha(T) allowed: samplers divide by alpha(t) (Tweedie's x0 = (x + sigma^2 s)/alpha),
# and alpha(T) = e^-50 ~ 2e-22 keeps 1/alpha^2 far inside float32's range (3.4e38).
MAX_NEG_LOG_ALPHA = 50.0


def check_beta_range(beta_min, beta_max) -> tuple[float, float]:
    """Validate 0 <= beta_min <= beta_max, beta_max > 0, both finite, and -log alpha(1) =
    beta_min/2 + (beta_max - beta_min)/4 <= MAX_NEG_LOG_ALPHA (float32 samplers stay finite)."""
    b0 = check_positive_finite("beta_min", beta_min, allow_zero=True)
    b1 = check_positive_finite("beta_max", beta_max)
    if b1 < b0:
        raise ValueError(f"beta_max={beta_max!r} is not allowed: it must be >= beta_min={beta_min!r}")
    if b0 / 2 + (b1 - b0) / 4 > MAX_NEG_LOG_ALPHA:
        raise ValueError(f"beta_min={beta_min!r}, beta_max={beta_max!r} are not allowed: they give "
                         f"-log alpha(1) = beta_min/2 + (beta_max - beta_min)/4 > {MAX_NEG_LOG_ALPHA:g}, "
                         f"so 1/alpha(1) overflows float32 (Song et al. use beta_max=20)")
    return b0, b1


def linear_beta_log_alpha(t: torch.Tensor, b0: float, b1: float) -> torch.Tensor:
    """log alpha(t) = -(1/2) int_0^t beta(s) ds for the linear schedule."""
    return -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0


def linear_beta_t_of_log_alpha(log_alpha: torch.Tensor, b0: float, b1: float) -> torch.Tensor:
    """Solve (b1 - b0) t^2 / 4 + b0 t / 2 = -log alpha for t >= 0 (cancellation-free root)."""
    c = -2 * log_alpha
    return 2 * c / (b0 + torch.sqrt(b0 ** 2 + 2 * (b1 - b0) * c))


class VPSDE(KernelSDE):
    """Continuous DDPM. Prior N(0, I)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N=N, T=1.0)
        self.beta_min, self.beta_max = check_beta_range(beta_min, beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return linear_beta_log_alpha(t, self.beta_min, self.beta_max)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def t_of_log_snr(self, lam):
        """alpha^2 = sigmoid(2 lambda), so -2 log alpha = softplus(-2 lambda)."""
        return linear_beta_t_of_log_alpha(-0.5 * F.softplus(-2 * lam), self.beta_min, self.beta_max)

    def discrete_betas(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """DDPM's betas beta_i = beta(t_i) / N on the grid t_i = i / (N - 1) (Ho et al. 2020)."""
        return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N,
                              dtype=dtype, device=device)

    def discretize(self, x, t):
        """DDPM chain x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z: f = (sqrt(1-beta_i) - 1) x, G = sqrt(beta_i)."""
        t = self.check_t(t, check_data("x", x))
        i = (t * (self.N - 1) / self.T).round().long()
        beta = self.discrete_betas(dtype=x.dtype, device=x.device)[i]
        return batch_view(torch.sqrt(1 - beta) - 1, x) * x, torch.sqrt(beta)
