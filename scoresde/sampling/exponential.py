"""Multistep exponential integrators of the probability-flow ODE (and of the reverse SDE) in log-SNR
time, for every kernel SDE: DDIM (with eta), DPM-Solver++ 2M / 3M, their SDE variants and UniPC are
settings of the one method `multistep`.

In log-SNR time lambda = log(alpha/sigma) the probability-flow ODE has the exact solution from
t_i to t_{i+1}, h = lambda_{i+1} - lambda_i (DPM-Solver++, Lu et al. 2022b, eq. 9):

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} int_0^h e^{-(h-u)} x0(lambda_i + u) du,

x0 Tweedie's data prediction (x + sigma^2 score)/alpha. Replacing x0 by the polynomial P through
known values (u_j, D_j), u_j = lambda_j - lambda_i, makes the integral a weighted sum, exactly:

    int_0^h e^{-(h-u)} P(u) du = sum_j w_j D_j,   sum_j w_j (u_j/h)^k = k! phi_k(h) / h^k  (k < #nodes),

the weights solving the moment equations (exact for every P of degree < #nodes), with phi_k(h) =
int_0^h e^{-(h-u)} u^k/k! du (phi_0 = 1 - e^-h, phi_k = h^k/k! - phi_{k-1}). The weights are
differentiable in the grid, so calibration.py can fit a grid by gradient descent.

* Predictor of order p: P through the last p data predictions (an explicit exponential
  Adams-Bashforth step). p = 1 is DDIM (Song et al. 2021a, eq. 12), p = 2 and 3 are DPM-Solver++ 2M
  and 3M (with the exact phi_k instead of 2M's phi_0 h/2).
* Corrector (UniC, Zhao et al. 2023): evaluate D_{i+1} = x0(x~_{i+1}, t_{i+1}) at the predicted
  point and redo the step with P through those p nodes plus lambda_{i+1} (an exponential
  Adams-Moulton step used once, PEC mode), raising the order to p + 1. D_{i+1} is the evaluation the
  next predictor needs anyway, so the corrector costs no NFE. UniPC's B(h) factor approximates these
  integrals; here they are exact. The last step is not corrected: its new evaluation would be at
  t = eps, which `sample` spends on the final Tweedie step.

Stochastic steps (`eta` in [0, 1], predictor only): DDIM's eta (Song et al. 2021a, eq. 16) adds
noise sigma_{i+1} n z, n = eta sqrt(1 - e^{-2h}), and shrinks the x term to keep the marginal
variance: x_{i+1} = (sigma_{i+1}/sigma_i) e^{-rho} x_i + alpha_{i+1} int_0^h c e^{-c(h-u)} x0 du +
sigma_{i+1} n z, with e^{-rho} = sqrt(1 - n^2) and c = 1 + rho/h (`noise_split`). At eta = 1, c = 2
and n = sqrt(1 - e^{-2h}): the reverse SDE solved exactly in its linear part, which is DDPM's
ancestral step at order 1 and SDE-DPM-Solver++ 2M / 3M (Lu et al. 2022b, sec. 5) at orders 2, 3
(`dpmpp_2m_sde`, `dpmpp_3m_sde`; their eta between 0 and 1 follows DDIM's definition, not
k-diffusion's e^{-eta h}). The kernel's weights are the deterministic ones at (c u_j, c h). Observed
weak orders (variance on a Gaussian, tests/test_sampling_stochastic.py): 1 (DDIM eta = 1), 2 (2M SDE).

Start-up: the first steps use the orders their history allows (the first is DDIM; with the
corrector, of order 2). That bounds 3M's asymptotic order by 2 in principle, but x0 barely varies at
low log-SNR, so the constant is tiny (observed orders 2.5-3 on a mixture,
tests/test_sampling_convergence.py).

Lower-order final steps (DPM-Solver++'s rule for short runs): with `lower_order_final`, step i of n
uses at most n - i predictor nodes, so the large last steps of a grid whose lambda-steps grow towards
eps (Karras; uniform t on a VP SDE) are not extrapolated with a high-degree polynomial. unipc's
default (None) turns it on exactly when the grid's lambda-steps are unequal (max/min > 1.01), i.e.
off on the log-SNR grid, where every step has the same h. On the benchmark mixtures
(docs/benchmarks.md) it raised the error at NFE 10 on the log-SNR grid in 3 of 4 cases, and leaving it
off raised the error 8-30x on uniform-t VP grids and 1.3-2.6x on Karras grids at NFE 10.

unipc's defaults: order 3 (4 with the corrector), 20 steps, schedule 'log_snr' (a grid fitted to
the model by `pilot_schedule` is better but costly: see `unipc`). Order 4 (5 with the
corrector) is for grids of about 20 steps or more: on the 64-D benchmark mixture at NFE 20 it ended
25-40% fewer of 16000 trajectories near the wrong mode than order 3, on each built-in grid, VP and
VE; at NFE 10 it was mixed (10-27% fewer on VP's log-SNR and uniform-t grids, 4% more on VE's) and far
worse on the VE Karras grid (6832 such trajectories against 44). Order 5 broke down on 5 of the 6
built-in NFE-10 grids (1224-10104 of the 16000 far), so 4 is the limit.

The log-SNR grid depends only on the kernel's SNR range, not on how an SDE parametrizes t, so a
plugin or a learned schedule gets the same grid as a VP SDE with the same SNR range ('uniform_t'
depends on that parametrization: for the linear-beta VP SDE it spends most steps at high noise).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_finite
from .common import grid_scalars, randn_like, step_pairs, times_like
from .denoise import tweedie
from .schedules import time_grid

MAX_ORDER = 4


def scaled_moments(h, count: int) -> torch.Tensor:
    """m_k = int_0^h e^{-(h-u)} (u/h)^k du = k! phi_k(h) / h^k for k < count, a (count,) float64 tensor.

    phi_k(h) = int_0^h e^{-(h-u)} u^k/k! du: phi_0 = 1 - e^-h, phi_k = h^k/k! - phi_{k-1}; below h = 1
    the recursion loses digits to cancellation, so there m_k = k! h sum_j (-h)^j/(k+1+j)! (30 terms).
    Differentiable in h when h is a tensor that requires grad.
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    k = torch.arange(count, dtype=torch.float64)
    if h < 1.0:
        j = torch.arange(30, dtype=torch.float64)
        coef = torch.exp(torch.lgamma(k + 1)[:, None] - torch.lgamma(k[:, None] + j + 2)) * (-1.0) ** j
        return h * (coef * h ** j).sum(1)
    phis = [-torch.expm1(-h)]
    for m in range(1, count):
        phis.append(h ** m / math.factorial(m) - phis[-1])
    return torch.stack(phis) * torch.exp(torch.lgamma(k + 1)) / h ** k


def quadrature_weights(nodes: list, h) -> torch.Tensor:
    """w with int_0^h e^{-(h-u)} P(u) du = sum_j w_j P(u_j) for every polynomial P of degree < len(nodes):
    the moment equations sum_j w_j (u_j/h)^k = m_k (k < len(nodes)), a Vandermonde system in the
    scaled nodes u_j/h, which lie within a few units of 0 on every grid, so it is well conditioned."""
    h = torch.as_tensor(h, dtype=torch.float64)
    r = torch.stack([torch.as_tensor(u, dtype=torch.float64) for u in nodes]) / h
    vandermonde = r[None, :] ** torch.arange(len(nodes), dtype=torch.float64)[:, None]  # [k, j] = r_j^k
    return torch.linalg.solve(vandermonde, scaled_moments(h, len(nodes)))


def noise_split(h: float, eta: float) -> tuple[float, float]:
    """(c, n) of a step of log-SNR length h with DDIM's eta (Song et al. 2021a, eq. 16): the injected
    noise is sigma_{i+1} n z with n = eta sqrt(1 - e^{-2h}), and the data prediction enters through
    the kernel c e^{-c(h-u)} of rate c = 1 + rho/h, e^{-rho} = sqrt(1 - n^2) (c = 1 at eta = 0, the
    probability-flow ODE; c = 2 at eta = 1, the reverse SDE of Lu et al. 2022b)."""
    n2 = eta ** 2 * -math.expm1(-2 * h)
    return 1 - 0.5 * math.log1p(-n2) / h, math.sqrt(n2)


def multistep(score_fn, sde, x, *, order: int, corrector: bool, steps: int, eps, generator, progress,
              project, schedule="log_snr", rho=7.0, lower_order_final=None, eta=0.0, name="multistep"):
    """Predictor of order `order` (1 to MAX_ORDER), with the corrector raising it by one when
    `corrector`, on `time_grid(sde, steps, eps, schedule)`; NFE = steps. eta in [0, 1] (predictor
    only): the stochastic steps of the module docstring. See the module docstring."""
    if not hasattr(sde, "log_snr"):
        raise ValueError(f"{name} needs a kernel SDE with alpha, sigma and log_snr; {type(sde).__name__} has none")
    ts = time_grid(sde, steps, eps, schedule, **({"rho": rho} if schedule == "karras" else {}))
    lam, sig, alp = (grid_scalars(v) for v in (sde.log_snr(ts), sde.sigma(ts), sde.alpha(ts)))
    if lower_order_final is None:
        hs = [b - a for a, b in zip(lam[:-1], lam[1:])]
        lower_order_final = max(hs) > 1.01 * min(hs)

    def data_prediction(x, i):
        return tweedie(x, score_fn(x, times_like(ts[i], x)), alp[i], sig[i])

    def step(x, i, nodes):
        h = lam[i + 1] - lam[i]
        if eta == 0:
            w = quadrature_weights([lj - lam[i] for lj, _ in nodes], h)
            out = (sig[i + 1] / sig[i]) * x
        else:  # the rate-c kernel's weights are the rate-1 weights at (c u, c h)
            c, n = noise_split(float(h), eta)
            w = quadrature_weights([c * (lj - lam[i]) for lj, _ in nodes], c * h)
            out = (sig[i + 1] / sig[i] * math.exp(-(c - 1) * h)) * x
            out.add_(randn_like(x, generator), alpha=sig[i + 1] * n)
        for wj, (_, d) in zip(w, nodes):  # fused multiply-adds: no temporary the size of x per node
            out.addcmul_(d, alp[i + 1] * wj)
        return out

    hist = [(lam[0], data_prediction(x, 0))]  # (lambda_j, D_j), newest last
    for i, _, s in step_pairs(ts, progress, name):
        p = min(order, len(hist), steps - i) if lower_order_final else min(order, len(hist))
        x_pred = step(x, i, hist[-p:])
        if project is not None:
            x_pred = project(x_pred, s, generator)
        if i == steps - 1:
            x = x_pred
            break
        new = (lam[i + 1], data_prediction(x_pred, i + 1))
        if corrector:
            x = step(x, i, hist[-p:] + [new])
            if project is not None:
                x = project(x, s, generator)
        else:
            x = x_pred
        hist = (hist + [new])[-order:]
    return x, {"steps": steps, "times": ts}


def unipc(score_fn, sde, x, *, steps=None, eps, generator, progress, project, order=3,
          schedule="log_snr", rho=7.0, corrector=True, lower_order_final=None):
    """UniPC: predictor of order `order` (1 to 4) and corrector of order + 1 in log-SNR time.

    steps (default 20) on `time_grid(sde, steps, eps, schedule)` ('log_snr', the default,
    'uniform_t', 'karras' with rho, or an explicit grid); NFE = steps (+1 for `sample`'s final
    Tweedie step). A grid fitted to score_fn by `pilot_schedule` (pilot.py), passed as schedule:
    on held-out Gaussian mixtures its error was 0.22-0.57x k-diffusion's best sampler's at NFE 10
    and 0.06-0.49x at NFE 20 (log_snr: 0.64-1.09x and 0.48-1.22x; experiments/bench/default_grid.py),
    for 1.4-1.9 million draw-evaluations of the score (1271-2341 calls) once,
    about the cost of 10^5 samples. That is why the default stays 'log_snr': compute the pilot
    grid once with `pilot_schedule` and pass the tensor to every call that shares it. See the
    module docstring.
    """
    if order not in range(1, MAX_ORDER + 1):
        raise ValueError(f"order={order!r} is not allowed: unipc supports predictor orders 1, 2, 3, 4")
    return multistep(score_fn, sde, x, order=order, corrector=corrector, steps=steps or 20, eps=eps,
                     generator=generator, progress=progress, project=project, schedule=schedule, rho=rho,
                     lower_order_final=lower_order_final, name=f"unipc order {order}")


def _predictor_only(name: str, order: int, default_steps: int, reference: str, default_eta: float = 0.0):
    def method(score_fn, sde, x, *, steps=None, eps, generator, progress, project,
               schedule="log_snr", rho=7.0, lower_order_final=False, eta=default_eta):
        eta = check_positive_finite("eta", eta, allow_zero=True)
        if eta > 1:
            raise ValueError(f"eta={eta!r} is not allowed: it must lie in [0, 1] (0 deterministic, 1 the reverse SDE)")
        return multistep(score_fn, sde, x, order=order, corrector=False, steps=steps or default_steps,
                         eps=eps, generator=generator, progress=progress, project=project,
                         schedule=schedule, rho=rho, lower_order_final=lower_order_final, eta=eta, name=name)

    method.__name__ = name
    method.__doc__ = (f"{reference}: the order-{order} predictor of `multistep` without corrector "
                      f"(default {default_steps} steps, schedule 'log_snr', 'uniform_t', 'karras' with rho, "
                      f"or an explicit grid; lower_order_final; eta in [0, 1], default {default_eta:g}). "
                      "See the module docstring.")
    return method


ddim = _predictor_only("ddim", 1, 50, "DDIM (Song et al. 2021a; eta = 1 is DDPM's ancestral sampling)")
dpmpp_2m = _predictor_only("dpmpp_2m", 2, 20, "DPM-Solver++ 2M (Lu et al. 2022b)")
dpmpp_3m = _predictor_only("dpmpp_3m", 3, 20, "DPM-Solver++ 3M (Lu et al. 2022b)")
dpmpp_2m_sde = _predictor_only("dpmpp_2m_sde", 2, 50, "SDE-DPM-Solver++ 2M (Lu et al. 2022b)", 1.0)
dpmpp_3m_sde = _predictor_only("dpmpp_3m_sde", 3, 50, "SDE-DPM-Solver++ 3M (Lu et al. 2022b)", 1.0)
