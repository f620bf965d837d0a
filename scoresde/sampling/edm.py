"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on any kernel SDE.

EDM works in the scaled variable x~ = x / alpha with noise level s = sigma / alpha = e^{-lambda}, where
every kernel SDE is the VE SDE x~_s = x0 + s z and the probability-flow ODE reads

    dx~/ds = (x~ - D(x~; s)) / s,   D = Tweedie's x0 = (x + sigma^2 score(x, t)) / alpha, x = alpha x~,

t = t(s) through the SDE's log-SNR. Each step i of a grid s_0 > ... > s_n (Karras' rho = 7 by default):

    gamma = min(S_churn / n, sqrt(2) - 1) if S_tmin <= s_i <= S_tmax else 0
    s^ = s_i (1 + gamma),  x^ = x~_i + sqrt(s^2 - s_i^2) S_noise z          (churn: add noise)
    d = (x^ - D(x^; s^)) / s^,  x' = x^ + (s_{i+1} - s^) d                   (Euler)
    x~_{i+1} = x^ + (s_{i+1} - s^) (d + (x' - D(x'; s_{i+1})) / s_{i+1}) / 2  (Heun's correction)

Two evaluations a step. EDM skips the correction on its last step because it ends at s = 0; here
the grid ends at eps > 0, so every step is corrected. s^ is capped at the SDE's s(T) (the score is
not defined above T), so the first step has no churn. S_churn = 0 is Heun's method on the ODE.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_finite, check_real
from .common import randn_like, step_pairs, times_like
from .denoise import tweedie
from .schedules import time_grid


def check_churn(S_churn, S_tmin, S_tmax, S_noise) -> tuple[float, float, float, float]:
    """Validate EDM's churn settings: S_churn >= 0, 0 <= S_tmin <= S_tmax (inf allowed), S_noise > 0."""
    S_churn = check_positive_finite("S_churn", S_churn, allow_zero=True)
    S_tmin = check_positive_finite("S_tmin", S_tmin, allow_zero=True)
    S_tmax = check_real("S_tmax", S_tmax)
    if math.isnan(S_tmax) or S_tmax < S_tmin:
        raise ValueError(f"S_tmax={S_tmax!r} is not allowed: it must be >= S_tmin={S_tmin!r} (inf allowed)")
    S_noise = check_positive_finite("S_noise", S_noise)
    return S_churn, S_tmin, S_tmax, S_noise


def edm(score_fn, sde, x, *, steps=None, eps, generator, progress, project, schedule="karras", rho=7.0,
        S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0):
    """Karras et al.'s Algorithm 2 (module docstring) on `time_grid(sde, steps, eps, schedule)`,
    18 steps by default; S_tmin and S_tmax are in EDM's noise level s = sigma / alpha. NFE = 2 steps."""
    if not hasattr(sde, "t_of_log_snr"):
        raise ValueError(f"edm needs a kernel SDE with alpha, sigma and t_of_log_snr; {type(sde).__name__} has none")
    S_churn, S_tmin, S_tmax, S_noise = check_churn(S_churn, S_tmin, S_tmax, S_noise)
    steps = steps or 18
    ts = time_grid(sde, steps, eps, schedule, **({"rho": rho} if schedule == "karras" else {}))
    alpha, s = sde.alpha(ts).tolist(), torch.exp(-sde.log_snr(ts)).tolist()
    s_max = s[0]

    def denoised(x_scaled, t, a, sg):
        """D(x~; s) at time t, where alpha(t) = a and sigma(t) = sg."""
        x = a * x_scaled
        return tweedie(x, score_fn(x, times_like(t, x)), a, sg)

    x = x / alpha[0]
    for i, t, t_next in step_pairs(ts, progress, "edm"):
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= s[i] <= S_tmax else 0.0
        s_hat = min(s[i] * (1 + gamma), s_max)
        if s_hat > s[i]:
            x = x + math.sqrt(s_hat ** 2 - s[i] ** 2) * S_noise * randn_like(x, generator)
            t_hat = sde.t_of_log_snr(torch.tensor(-math.log(s_hat), dtype=torch.float64))
            a_hat = float(sde.alpha(t_hat))
        else:
            t_hat, a_hat = t, alpha[i]
        d = (x - denoised(x, t_hat, a_hat, a_hat * s_hat)) / s_hat
        x_euler = x + (s[i + 1] - s_hat) * d
        d_next = (x_euler - denoised(x_euler, t_next, alpha[i + 1], alpha[i + 1] * s[i + 1])) / s[i + 1]
        x = x + (s[i + 1] - s_hat) * (d + d_next) / 2
        if project is not None:
            x = project(alpha[i + 1] * x, t_next, generator) / alpha[i + 1]
    return alpha[-1] * x, {"steps": steps, "times": ts}
