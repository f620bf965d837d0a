"""UniPC-style predictor-corrector exponential integrator (Zhao et al. 2023), for every kernel SDE.

In log-SNR time lambda = log(alpha/sigma) the probability-flow ODE has the exact solution from
t_i to t_{i+1}, h = lambda_{i+1} - lambda_i (DPM-Solver++, Lu et al. 2022b, eq. 9):

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} int_0^h e^{-(h-u)} x0(lambda_i + u) du,

x0 the data prediction (x + sigma^2 score)/alpha. Replacing x0 by the polynomial P through known
values (u_j, D_j), u_j = lambda_j - lambda_i, makes the integral a weighted sum, exactly:

    int_0^h e^{-(h-u)} P(u) du = sum_j w_j D_j,   sum_j w_j (u_j/h)^k = k! phi_k(h) / h^k  (k < #nodes),

the weights solving the moment equations (exact for every P of degree < #nodes), with phi_k(h) =
int_0^h e^{-(h-u)} u^k/k! du (phi_0 = 1 - e^-h, phi_k = h^k/k! - phi_{k-1}). The weights are
differentiable in the grid, so calibration.py can fit a grid by gradient descent.

* Predictor (UniP-p): P through the last p data predictions lambda_{i-p+1..i} (an explicit
  exponential Adams-Bashforth step of order p; p = 1 is DDIM, p = 2, 3 are DPM-Solver++ 2M/3M).
* Corrector (UniC-p): evaluate D_{i+1} = x0(x~_{i+1}, t_{i+1}) at the predicted point and redo the
  step with P through those p nodes plus lambda_{i+1} (an exponential Adams-Moulton step used once,
  PEC mode), raising the order to p + 1. D_{i+1} is the evaluation the next predictor needs anyway,
  so the corrector costs no NFE; the next step starts from the corrected x_{i+1}.

UniPC's B(h) factor approximates these integrals; here they are exact (as in our dpmpp_3m).
Start-up: the first step has one node, so its predictor is DDIM and its corrector of order 2.
Lower-order final steps (DPM-Solver++'s rule for short runs): with `lower_order_final`, step i of
n uses at most n - i predictor nodes, so the large last steps of a grid whose lambda-steps grow
towards eps (Karras; uniform t on a VP SDE) are not extrapolated with a high-degree polynomial.
Default (None): on exactly when the grid's lambda-steps are unequal (max/min > 1.01), i.e. off on
the log-SNR grid, where every step has the same h. Measured on the benchmark mixtures
(docs/benchmarks.md): on the log-SNR grid it raised the error at NFE 10 in 3 of 4 cases; leaving it
off raised the error 8-30x on uniform-t VP grids, and 1.3-2.6x on Karras grids at NFE 10 (mixed at
NFE 20). The last step is not corrected: its new evaluation would be at t = eps, which `sample`
spends on the final Tweedie step.

Defaults: order 3 (order 4 with the corrector), 20 steps, schedule 'log_snr'. Order 4 (5 with
the corrector) is for grids of about 20 steps or more: on the 64-D benchmark mixture at NFE 20 it
ended 25-40% fewer of 16000 trajectories near the wrong mode than order 3, on each built-in grid,
VP and VE; at NFE 10 it was mixed (10-27% fewer on VP's log-SNR and uniform-t grids, 4% more on
VE's) and far worse on the VE Karras grid (6832 such trajectories against 44;
experiments/results/samplers_builtin_orders.md). Order 5 breaks down on 5 of the 6 built-in NFE-10
grids of that mixture (1224-10104 of the 16000 far), so 4 is the limit.

The log-SNR grid depends only on the kernel's SNR range, not on how an SDE parametrizes t, so a
plugin or a learned schedule gets the same grid as a VP SDE with the same SNR range ('uniform_t'
depends on that parametrization: for the linear-beta VP SDE it spends most steps at high noise).
"""

from __future__ import annotations

import math

import torch

from .common import grid_scalars, step_pairs
from .exponential import data_prediction
from .schedules import time_grid


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


def unipc(score_fn, sde, x, *, steps=None, eps, generator, progress, project, order=3,
          schedule="log_snr", rho=7.0, corrector=True, lower_order_final=None):
    """UniPC-style multistep predictor (order `order`) and corrector (order + 1) in log-SNR time.

    steps (default 20) on `time_grid(sde, steps, eps, schedule)` ('log_snr', 'uniform_t', or
    'karras' with rho); NFE = steps (+1 for `sample`'s final Tweedie step). See the module docstring.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order={order!r} is not allowed: unipc supports predictor orders 1, 2, 3, 4")
    if not hasattr(sde, "log_snr"):
        raise ValueError(f"unipc needs a kernel SDE with alpha, sigma and log_snr; {type(sde).__name__} has none")
    steps = steps or 20
    ts = time_grid(sde, steps, eps, schedule, **({"rho": rho} if schedule == "karras" else {}))
    lam, sig, alp = (grid_scalars(v) for v in (sde.log_snr(ts), sde.sigma(ts), sde.alpha(ts)))
    if lower_order_final is None:
        hs = [b - a for a, b in zip(lam[:-1], lam[1:])]
        lower_order_final = max(hs) > 1.01 * min(hs)
    hist = [(lam[0], data_prediction(score_fn, sde, x, ts[0]))]  # (lambda_j, D_j), newest last

    def step(x, i, nodes):
        h = lam[i + 1] - lam[i]
        w = quadrature_weights([lj - lam[i] for lj, _ in nodes], h)
        return (sig[i + 1] / sig[i]) * x + alp[i + 1] * sum(wj * d for wj, (_, d) in zip(w, nodes))

    for i, _, s in step_pairs(ts, progress, f"unipc order {order}"):
        p = min(order, len(hist), steps - i) if lower_order_final else min(order, len(hist))
        x_pred = step(x, i, hist[-p:])
        if i == steps - 1:  # last step: no corrector (its evaluation would be the final Tweedie step)
            x = x_pred if project is None else project(x_pred, s, generator)
            break
        if project is not None:
            x_pred = project(x_pred, s, generator)
        new = (lam[i + 1], data_prediction(score_fn, sde, x_pred, s))
        x = step(x, i, hist[-p:] + [new]) if corrector else x_pred
        if project is not None and corrector:
            x = project(x, s, generator)
        hist = (hist + [new])[-order:]
    return x, {"steps": steps, "times": ts}


unipc.default_steps = 20
