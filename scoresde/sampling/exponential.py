"""Exponential integrators of the probability-flow ODE in log-SNR time, for every kernel SDE.

With lambda = log(alpha/sigma) and the data prediction x0(x, t) = (x + sigma^2 score)/alpha
(Tweedie), the probability-flow ODE has the exact solution from t to s (Lu et al. 2022b,
DPM-Solver++, eq. 9), h = lambda_s - lambda_t > 0:

    x_s = (sigma_s/sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^lambda x0(lambda) d lambda.

Expanding x0 in a Taylor series about lambda_t, the integral is exact term by term:

    x_s = (sigma_s/sigma_t) x_t + alpha_s [phi_0 x0 + phi_1 x0' + phi_2 x0''],
    phi_0 = 1 - e^-h,  phi_1 = h - phi_0,  phi_2 = h^2/2 - phi_1,

with the derivatives (in lambda) estimated from earlier steps by divided differences (multistep):
order 1 is DDIM (Song et al. 2021a, eq. 12; x0' = 0), order 2 uses the last two x0 (DPM-Solver++
2M, with the exact phi_1 instead of its phi_0 h/2), order 3 a quadratic through the last three
(3M). The first steps use the orders their history allows; that order-1 start bounds 3M's
asymptotic order by 2 in principle, but x0 barely varies at low log-SNR so its constant is tiny
(observed orders 2.5-3 on a mixture, tests/test_sampling_convergence.py). A second-order start-up
without an extra evaluation is what the corrector of `unipc` (unipc.py) gives.
"""

from __future__ import annotations

import math

import torch

from .common import grid_scalars, step_pairs, times_like
from .schedules import time_grid


def data_prediction(score_fn, sde, x, t) -> torch.Tensor:
    """Tweedie's x0 = (x + sigma_t^2 score(x, t)) / alpha_t (differentiable in t when t requires grad)."""
    tt = t.to(torch.float64).reshape(1) if torch.is_tensor(t) else torch.tensor([float(t)], dtype=torch.float64)
    alpha, sigma = sde.alpha(tt)[0], sde.sigma(tt)[0]
    return (x + sigma ** 2 * score_fn(x, times_like(t, x))) / alpha


def phis(h: float) -> tuple[float, float, float]:
    """phi_k(h) = e^-h int_0^h e^u u^k / k! du for k = 0, 1, 2 (h a float, or a tensor being differentiated)."""
    phi0 = -torch.expm1(-h) if torch.is_tensor(h) else -math.expm1(-h)
    phi1 = h - phi0
    return phi0, phi1, h * h / 2 - phi1


def multistep(score_fn, sde, x, *, order, steps, eps, generator, progress, project,
              schedule="log_snr", rho=7.0, lower_order_final=False):
    """Multistep exponential integrator of the given order (1, 2 or 3) on a schedule's grid.

    lower_order_final: step i of `steps` uses at most steps - i points (DPM-Solver++'s rule, meant
    for the large final steps of a Karras grid at low NFE).
    """
    if not hasattr(sde, "log_snr"):
        raise ValueError(f"exponential integrators need a kernel SDE with alpha, sigma and log_snr; "
                         f"{type(sde).__name__} has none")
    kwargs = {"rho": rho} if schedule == "karras" else {}
    ts = time_grid(sde, steps, eps, schedule, **kwargs)
    lam, sig, alp = (grid_scalars(v) for v in (sde.log_snr(ts), sde.sigma(ts), sde.alpha(ts)))
    hist: list[torch.Tensor] = []  # x0 at previous grid points, newest last
    for i, t, s in step_pairs(ts, progress, f"dpm-solver order {order}"):
        x0 = data_prediction(score_fn, sde, x, t)
        hist = (hist + [x0])[-order:]
        used = hist[-min(len(hist), steps - i):] if lower_order_final else hist
        h = lam[i + 1] - lam[i]
        phi0, phi1, phi2 = phis(h)
        update = phi0 * x0
        if len(used) >= 2:
            h0 = lam[i] - lam[i - 1]
            d1 = (used[-1] - used[-2]) / h0
            if len(used) == 3:
                h1 = lam[i - 1] - lam[i - 2]
                dd = (d1 - (used[-2] - used[-3]) / h1) / (h0 + h1)
                update = update + phi1 * (d1 + h0 * dd) + phi2 * (2 * dd)
            else:
                update = update + phi1 * d1
        x = (sig[i + 1] / sig[i]) * x + alp[i + 1] * update
        if project is not None:
            x = project(x, s, generator)
    return x, {"steps": steps, "times": ts}


def _method(name: str, order: int, default_steps: int):
    def method(score_fn, sde, x, *, steps=None, eps, generator, progress, project,
               schedule="log_snr", rho=7.0, lower_order_final=False):
        return multistep(score_fn, sde, x, order=order, steps=steps or default_steps, eps=eps,
                         generator=generator, progress=progress, project=project,
                         schedule=schedule, rho=rho, lower_order_final=lower_order_final)

    method.__name__ = name
    method.__doc__ = (f"Exponential integrator of order {order} (default {default_steps} steps, "
                      "schedule 'log_snr', 'uniform_t' or 'karras' with rho; lower_order_final). See module docstring.")
    method.default_steps = default_steps
    return method


ddim = _method("ddim", 1, 50)
dpmpp_2m = _method("dpmpp_2m", 2, 20)
dpmpp_3m = _method("dpmpp_3m", 3, 20)
