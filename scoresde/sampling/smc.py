"""Twisted sequential Monte Carlo for inverse problems (Wu et al. 2023, "Practical and asymptotically
exact conditional sampling in diffusion models", TDS).

Guidance alone moves samples towards the measurement but cannot reweight the prior's modes, so it
is biased wherever p(x_0 | x_t) is far from Gaussian. TDS runs n particles through the ancestral
kernel p(x_s | x_t) with a proposal shifted by the guidance, q(x_s | x_t) = N(mean + v grad l_t, v),
and weights them by

    w  <-  w * p(x_s | x_t) p~_s(y | x_s) / (q(x_s | x_t) p~_t(y | x_t)),   l_t = log p~_t(y | x_t),

the twist p~ being a likelihood guidance term's Gaussian approximation (`PosteriorCovarianceGuidance`
or `DPS`); particles are resampled (systematically) when the effective sample size falls below n/2, and the final
Tweedie estimates are resampled by their weights. The result is exact as n -> infinity for any
twist; a good twist needs fewer particles. The particles of one call share one measurement and are
not independent (resampling couples them), unlike `sample`'s per-sample draws.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_count, check_generator
from .inverse import DPS, PosteriorCovarianceGuidance
from .schedules import time_grid
from .sde_solvers import kernel_transition


def systematic_resample(weights: torch.Tensor, generator) -> torch.Tensor:
    """n indices drawn by systematic resampling: one uniform u, points (i + u) / n on the weights' CDF
    (each particle kept floor(n w) or ceil(n w) times; less variance than multinomial draws)."""
    n = weights.shape[0]
    u = (torch.arange(n, dtype=weights.dtype) + torch.rand((), dtype=weights.dtype, generator=generator)) / n
    return torch.searchsorted(torch.cumsum(weights, 0), u).clamp_max(n - 1)


def twisted_smc(twist, sde, shape, *, steps: int, eps: float = 1e-3, generator: torch.Generator | None = None,
                dtype=torch.float64) -> tuple[torch.Tensor, dict]:
    """shape = (n particles, *data shape); one score evaluation and VJP per step (steps + 1 in all).
    Returns (samples, {"nfe", "resampled"}) with resampled the number of resampling steps."""
    likelihood = isinstance(twist, PosteriorCovarianceGuidance) or (isinstance(twist, DPS) and twist.step_rule == "gaussian")
    if not likelihood:
        raise TypeError(f"twist must be a PosteriorCovarianceGuidance or a DPS with step_rule='gaussian' "
                        f"(a likelihood), got {twist!r}")
    steps = check_count("steps", steps)
    check_generator(generator)
    n = shape[0]
    ts = time_grid(sde, steps, eps)
    x = sde.prior_sampling(tuple(shape), generator=generator).to(dtype)
    full = lambda tv: torch.full((n,), float(tv), dtype=dtype)  # noqa: E731
    ell, grad, x0 = twist.log_likelihood_and_grad(x, full(ts[0]))
    logw, resampled = ell.clone(), 0
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
        w = torch.softmax(logw, 0)
        if 1 / float((w ** 2).sum()) < n / 2:
            idx = systematic_resample(w, generator)
            x, ell, grad, x0, logw = x[idx], ell[idx], grad[idx], x0[idx], torch.zeros_like(logw)
            resampled += 1
        a, g2 = kernel_transition(sde, s, t)
        st = torch.tensor([s, t], dtype=torch.float64)
        (alpha_s, _), (sigma_s, sigma_t) = sde.alpha(st).tolist(), sde.sigma(st).tolist()
        mean = (alpha_s * g2 / sigma_t ** 2) * x0 + (a * sigma_s ** 2 / sigma_t ** 2) * x  # ancestral_step's
        var = g2 * sigma_s ** 2 / sigma_t ** 2
        shifted = mean + var * grad
        x_new = shifted + math.sqrt(var) * torch.randn(x.shape, dtype=dtype, generator=generator)
        ell_new, grad, x0 = twist.log_likelihood_and_grad(x_new, full(s))
        log_p = -((x_new - mean) ** 2).flatten(1).sum(1) / (2 * var)
        log_q = -((x_new - shifted) ** 2).flatten(1).sum(1) / (2 * var)
        logw = logw + log_p - log_q + ell_new - ell
        x, ell = x_new, ell_new
    return x0[systematic_resample(torch.softmax(logw, 0), generator)], {"nfe": steps + 1, "resampled": resampled}
