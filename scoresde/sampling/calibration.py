"""Time grids fitted to a score model: the steps of a deterministic sampler placed where they help.

A fixed-step solver's error at low NFE depends as much on where its steps lie as on its order, and
no closed-form grid wins every model (docs/benchmarks.md: log-SNR, uniform-t and Karras each lose
somewhere by 2-50x). `calibrate_schedule` fits the grid itself, as LD3 (Tong et al. 2025) and
optimal-stepsize distillation (Pei et al. 2025) do, for one solver, NFE and model:

    min over lambda_1 < ... < lambda_{n-1}   mean_b || S(x_T^b; t(lambda)) - Phi(x_T^b) ||^2 / D,

S the solver's output (after the final Tweedie step) on the grid, Phi the exact probability-flow
map, approximated by an adaptive dopri5 solve at `reference_tol`, and x_T^b a calibration batch of
prior draws. The grid is parametrized in log-SNR by its increments,
lambda_i = lambda_T + (lambda_eps - lambda_T) sum_{j<i} w_j / sum_j w_j, w = exp([0, theta]),
so every theta gives a valid grid; theta (n - 1 numbers) starts from the best of the built-in
schedules and is optimized with scipy's derivative-free Powell method, each evaluation one solver
run on the fitting batch. The fitted grid is then used as `sample(..., schedule=result.times)`.

It is a fit, and the mean squared error is heavy-tailed: a few trajectories that pass near a
boundary between modes carry most of it, so a small batch overfits the few it happens to hold
(64-D mixture, VP, NFE 20: 2000 plain draws fitted 0.0024 but gave 0.045 on fresh draws). With a
pool of N draws larger than the fitting `batch` b, the batch is stratified: the h = b/4 draws with
the largest error under the best built-in grid (the tail) enter with weight 1, and b - h of the
others, drawn at random, with weight (N - h)/(b - h), so that

    err^2(grid) ~ (1/N) [ sum_{hard} e_i(grid) + (N - h)/(b - h) sum_{drawn} e_i(grid) ]

is an unbiased estimate of the pool's mean error for every grid, with the tail counted in full.
The pool is ranked against a cheap proxy of Phi, unipc on max(8 n, 100) log-SNR steps (its error
is orders below the n-step grids' it ranks), so the reference solve runs on the batch alone: the
pool costs max(8 n, 100) + 3 n score evaluations of each draw, the fit max_evals * n evaluations
of the batch. The tail still overfits: on the 64-D benchmark mixtures at NFE 20 the fitted grids'
errors estimated on the batch are 1.5-2.9x below their errors on fresh draws (docs/benchmarks.md),
so check the error on many fresh draws, as experiments/bench/samplers_fresh_draws.py does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..sdes.base import check_generator, check_positive_finite, check_steps
from .schedules import time_grid

DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ode")
START_SCHEDULES = ("log_snr", "uniform_t", "karras")
PROXY_FACTOR, PROXY_MIN_STEPS = 8, 100  # the pool ranking's proxy: unipc on max(8 steps, 100) log-SNR steps


class CalibratedSchedule(NamedTuple):
    """times: the fitted (steps + 1,) float64 grid T > ... > eps; error: its RMS error, estimated
    on the fitting batch for the pool; start / start_error: the best built-in schedule and its RMS
    error, estimated alike; evals: solver runs on the batch spent."""

    times: torch.Tensor
    error: float
    start: str
    start_error: float
    evals: int


def calibrate_schedule(score_fn, sde, x_T: torch.Tensor, *, method: str = "unipc", steps: int,
                       eps: float = 1e-3, max_evals: int = 1500, reference_tol: float = 1e-6,
                       batch: int | None = None, generator: torch.Generator | None = None,
                       progress: bool = False, **method_options) -> CalibratedSchedule:
    """Fit the time grid of deterministic `method` with `steps` steps to score_fn (module docstring).

    x_T: the pool of prior draws, shape (N, ...). batch: draws in each fitting run (default N, all
    of them); below N the batch is stratified by the best built-in grid's per-draw error against
    the proxy, its random part drawn from `generator`. A pool many times the batch (e.g. N =
    128000, b = 2000) captures more of the rare hard trajectories at the same cost per run.
    method_options go to every run of the method (e.g. order).
    """
    from scipy.optimize import minimize

    from . import sample  # the package imports this module

    if method not in DETERMINISTIC:
        raise ValueError(f"method={method!r} cannot be calibrated: use a deterministic fixed-grid "
                         f"sampler, one of {', '.join(DETERMINISTIC)}")
    if "schedule" in method_options:
        raise ValueError("calibrate_schedule chooses the schedule itself: do not pass schedule=")
    steps = check_steps("steps", steps)
    if steps < 2:
        raise ValueError(f"steps={steps} is not allowed: a grid of one step has no time to move; use steps >= 2")
    max_evals = check_steps("max_evals", max_evals)
    reference_tol = check_positive_finite("reference_tol", reference_tol)
    if not torch.is_tensor(x_T) or x_T.dim() < 2 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be a batch of prior draws, shape (B, ...), got "
                         f"{tuple(x_T.shape) if torch.is_tensor(x_T) else type(x_T).__name__}")
    pool = x_T.shape[0]
    batch = pool if batch is None else check_steps("batch", batch)
    if batch > pool:
        raise ValueError(f"batch={batch} is not allowed: it must be at most the pool of x_T's {pool} draws")
    check_generator(generator)

    def per_draw_errors(grid: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = sample(score_fn, sde, method=method, steps=steps, eps=eps, x_T=x, schedule=grid,
                     **method_options)
        return (out - target).double().pow(2).flatten(1).mean(1)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return sample(score_fn, sde, method="ode", x_T=x, eps=eps, rtol=reference_tol, atol=reference_tol,
                      progress=progress)

    starts = {name: time_grid(sde, steps, eps, name) for name in START_SCHEDULES}
    if batch == pool:
        idx, weights = torch.arange(pool), torch.full((pool,), 1.0 / pool, dtype=torch.float64)
    else:  # rank the pool by the best built-in grid's error against a cheap fine-grid proxy
        proxy = sample(score_fn, sde, method="unipc", steps=max(PROXY_FACTOR * steps, PROXY_MIN_STEPS),
                       eps=eps, x_T=x_T, schedule="log_snr", progress=progress)
        proxy_sq = {name: per_draw_errors(grid, x_T, proxy) for name, grid in starts.items()}
        idx, weights = _stratified_batch(proxy_sq[min(proxy_sq, key=lambda n: float(proxy_sq[n].mean()))],
                                         batch, generator)
    x_fit = x_T[idx]
    target_fit = reference(x_fit)

    def rms(grid: torch.Tensor) -> float:
        return math.sqrt(float((weights * per_draw_errors(grid, x_fit, target_fit)).sum()))

    start_errors = {name: rms(grid) for name, grid in starts.items()}
    start = min(start_errors, key=start_errors.get)

    lam_T, lam_eps = (float(v) for v in sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))

    def grid_of(theta: np.ndarray) -> torch.Tensor:
        w = np.exp(np.concatenate([[0.0], theta]))
        frac = torch.tensor(np.concatenate([[0.0], np.cumsum(w) / w.sum()]), dtype=torch.float64)
        t = sde.t_of_log_snr(lam_T + (lam_eps - lam_T) * frac).to(torch.float64)
        t[0], t[-1] = sde.T, eps
        return t

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_evals, desc=f"calibrating {method} ({steps} steps)", leave=False)
    best = [start_errors[start], starts[start]]

    def objective(theta: np.ndarray) -> float:
        try:
            grid = grid_of(theta)
            err = rms(grid)
        except ValueError:  # a degenerate grid (steps collapsed in float64) or a diverged run
            return math.inf
        if err < best[0]:
            best[:] = [err, grid]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rms=f"{best[0]:.3g}")
        return err * err

    lam = sde.log_snr(starts[start]).numpy()
    theta0 = np.log(np.diff(lam)[1:] / (lam[1] - lam[0]))
    res = minimize(objective, theta0, method="Powell",
                   options={"maxfev": max_evals, "xtol": 1e-2, "ftol": 1e-3})
    if bar is not None:
        bar.close()
    return CalibratedSchedule(best[1], best[0], start, start_errors[start], int(res.nfev) + len(starts))


def _stratified_batch(errors: torch.Tensor, batch: int, generator: torch.Generator | None):
    """Indices and weights (summing to 1) of a fitting batch of `batch` draws out of N = len(errors):
    the h = batch // 4 largest errors at 1/N plus a uniform draw of the rest at (N - h) / ((batch - h) N)
    (module docstring; batch = N gives every draw once at 1/N)."""
    pool = errors.shape[0]
    hard = batch // 4
    order = errors.argsort(descending=True)
    rest = order[hard:]
    drawn = rest[torch.randperm(rest.shape[0], generator=generator)[:batch - hard]]
    weights = torch.cat([torch.ones(hard, dtype=torch.float64),
                         torch.full((batch - hard,), (pool - hard) / (batch - hard), dtype=torch.float64)])
    return torch.cat([order[:hard], drawn]), weights / pool
