"""A VP SDE through a discrete schedule's table of alpha-bar (DDPM's cumulative products).

A discrete DDPM-style schedule gives abar_k = prod_{i <= k} (1 - beta_i) for steps k = 0..N-1, with
x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) z (Ho et al. 2020, eq. 4). Step k sits at the time

    t_k = (k + 1) / N,   so t = 1/N is the first noisy step, t = T = 1 the last, and t = 0 the data
                          (abar = 1 there, the step "k = -1"),

and in between alpha(t)^2 is interpolated in L(t) = log alpha(t)^2 by a piecewise-cubic Hermite
curve through the N + 1 points (j/N, L_j), L_0 = 0, L_j = log abar_{j-1}, with centred slopes
(exact where beta is linear in t, as in DDPM's schedule) limited so the curve stays monotone
(Fritsch & Carlson 1980).
Then alpha(t_k)^2 = abar_k exactly, sigma^2 = 1 - alpha^2 (variance preserving), and

    f(t) = L'(t) / 2,   g(t)^2 = -L'(t) = beta(t),   lambda(t) = (L - log(1 - e^L)) / 2.

Why log abar, and cubic: log abar is -int beta, so linear interpolation would be DDPM's "constant
beta on each step", and the drift of the probability-flow ODE would jump at each of the N knots;
the cubic makes beta(t), and so the drift, continuous in t. The limited slopes keep L strictly
decreasing, so lambda(t) is too and its inverse (KernelSDE's bisection) is well defined.
"""

from __future__ import annotations

import torch

from .kernel import KernelSDE
from .vp import MAX_NEG_LOG_ALPHA


class TabulatedVPSDE(KernelSDE):
    """VP SDE whose alpha(t)^2 passes through `alphas_cumprod[k]` at t = (k + 1) / N. Prior N(0, I)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).flatten()
        if abar.numel() < 2:
            raise ValueError(f"alphas_cumprod must hold at least 2 steps, got {abar.numel()}")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing with values in (0, 1), got "
                             f"[{float(abar[0]):.6g}, ..., {float(abar[-1]):.6g}] (min {float(abar.min()):.3g}, "
                             f"max {float(abar.max()):.3g})")
        if float(abar[-1].log()) / 2 < -MAX_NEG_LOG_ALPHA:
            raise ValueError(f"alphas_cumprod[-1]={float(abar[-1]):.3g} is too small: 1/alpha(T) would overflow "
                             f"float32 (alpha(T) must be >= e^-{MAX_NEG_LOG_ALPHA:g})")
        super().__init__(N=abar.numel(), T=1.0)
        self.alphas_cumprod = abar
        knots = torch.cat([abar.new_zeros(1), abar.log()])  # L_j at t = j / N, j = 0..N
        secants = (knots[1:] - knots[:-1]) * self.N  # all < 0
        slopes = torch.empty_like(knots)
        # centred slopes, exact for linear beta, at most twice either secant (all are negative)
        slopes[1:-1] = torch.maximum((secants[:-1] + secants[1:]) / 2, 2 * torch.maximum(secants[:-1], secants[1:]))
        slopes[0], slopes[-1] = _end_slope(secants[0], secants[1]), _end_slope(secants[-1], secants[-2])
        self._tables = {(torch.device("cpu"), torch.float64): (knots, slopes)}

    def _table(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Knot values and slopes on t's device and in its dtype (copied once per device and dtype)."""
        key = (t.device, t.dtype)
        if key not in self._tables:
            self._tables[key] = tuple(v.to(t.device, t.dtype) for v in self._tables[torch.device("cpu"), torch.float64])
        return self._tables[key]

    def log_alpha_sq_and_slope(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L(t) = log alpha(t)^2 and L'(t), from the Hermite cubic of t's interval."""
        knots, slopes = self._table(t)
        u = t * self.N
        j = u.detach().floor().clamp(0, self.N - 1).long()
        s = u - j
        h = 1.0 / self.N
        y0, y1, d0, d1 = knots[j], knots[j + 1], slopes[j] * h, slopes[j + 1] * h
        s2, s3 = s * s, s * s * s
        value = (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * d0 + (3 * s2 - 2 * s3) * y1 + (s3 - s2) * d1
        slope = ((6 * s2 - 6 * s) * (y0 - y1) + (3 * s2 - 4 * s + 1) * d0 + (3 * s2 - 2 * s) * d1) * self.N
        return value, slope

    def log_alpha(self, t):
        return self.log_alpha_sq_and_slope(t)[0] / 2

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha_sq_and_slope(t)[0]))

    def f(self, t):
        return self.log_alpha_sq_and_slope(t)[1] / 2

    def g2(self, t):
        return -self.log_alpha_sq_and_slope(t)[1]

    def log_snr(self, t):
        """lambda = (L - log(1 - e^L)) / 2, free of the cancellation in 1 - alpha^2 near t = 0."""
        L = self.log_alpha_sq_and_slope(t)[0]
        return (L - torch.log(-torch.expm1(L))) / 2

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"TabulatedVPSDE(N={self.N}, alphas_cumprod=[{float(self.alphas_cumprod[0]):.6g}, ..., " \
               f"{float(self.alphas_cumprod[-1]):.6g}])"


def _end_slope(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Slope at an end knot: the three-point estimate (3 d_0 - d_1) / 2 (exact for a quadratic L),
    its ratio to the end secant d_0 held in [1/2, 2]. Every slope is then between 0 and 2 times the
    secants beside it, inside Fritsch and Carlson's circle alpha^2 + beta^2 <= 9 (alpha, beta the
    ratios of an interval's end slopes to its secant) where the cubic is monotone."""
    return ((3 * first - second) / (2 * first)).clamp(0.5, 2.0) * first
