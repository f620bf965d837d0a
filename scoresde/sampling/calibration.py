"""Time grids fitted to a score model: the steps of a deterministic sampler placed where they help.

A fixed-step solver's error at low NFE depends as much on where its steps lie as on its order, and
no closed-form grid wins every model (docs/benchmarks.md: log-SNR, uniform-t and Karras each lose
somewhere by 2-50x). `calibrate_schedule` fits the grid itself, as LD3 (Tong et al. 2025) and
optimal-stepsize distillation (Pei et al. 2025) do, for one solver, NFE and model:

    min over lambda_1 < ... < lambda_{n-1}   E_{x_T ~ prior} || S(x_T; t(lambda)) - Phi(x_T) ||^2 / D,

S the solver's output (after the final Tweedie step) on the grid and Phi the probability-flow map,
approximated by `unipc` on `reference_steps` log-SNR steps (default max(10 n, 200); on the
benchmark mixtures its RMS error is 2e-5 to 5e-5, three orders below the fitted n-step grids').
The grid is parametrized in log-SNR by its increments, lambda_i = lambda_T + (lambda_eps - lambda_T)
sum_{j<i} w_j / sum_j w_j, w = exp([0, theta]), so every theta gives a valid grid. theta (n - 1
numbers) starts from the best of the built-in schedules and is fitted by Adam, the gradient taken
through the solver's run (the score's dependence on x and on t included; the methods'
coefficients are differentiable in the grid), with the learning rate decaying from lr to 0 on a
cosine.

The expectation is over a pool of N prior draws x_T, and the error is heavy-tailed: a few
trajectories that pass near a boundary between modes carry most of it. Each iteration's loss is
therefore taken on a stratified minibatch of b draws: the h = b/4 draws with the largest error
under the start grid, always, with weight 1, and b - h of the others, drawn afresh each iteration,
with weight (N - h)/(b - h), so that

    err^2(grid) ~ (1/N) [ sum_{hard} e_i(grid) + (N - h)/(b - h) sum_{drawn} e_i(grid) ]

is an unbiased estimate of the pool's mean error for every grid, with the tail counted in every
step. Every `check_every` iterations the grid is scored on the whole pool, and the best grid so
far (the start included) is the result; a check 1.5x (RESET) worse than the best returns theta
to the best grid. A fixed fitting batch overfits its few hard draws: a derivative-free fit
(Powell's method) on a fixed batch of 2000 gives 64-D benchmark grids whose batch errors are
1.5-2.9x below their errors on fresh draws at NFE 20. With minibatches drawn afresh from a pool of
128000, the pool errors of the same benchmark's fits are 1-17% below their errors on 64000 fresh
draws at NFE 10, and from 26% above to 2.0x below at NFE 20, where a few draws
decide (10-20 of the pool end near another mode; docs/benchmarks.md). Cost: reference_steps
evaluations of each pool draw once, about 3 n (forward and backward) per minibatch draw per
iteration, and n per pool draw per check.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import (check_count, check_data, check_eps, check_generator, check_kwargs, check_positive_finite,
                       check_sde)
from .denoise import tweedie_denoise
from .methods import METHODS
from .schedules import time_grid

DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ode")
START_SCHEDULES = ("log_snr", "uniform_t", "karras")
CHUNK = 16384  # draws per solver run when scoring the whole pool
RESET = 1.5  # a check whose pool mean squared error exceeds the best's by this factor returns to the best grid


class CalibratedSchedule(NamedTuple):
    """times: the fitted (steps + 1,) float64 grid T > ... > eps; error: its RMS error over the pool
    against the reference; start / start_error: the best built-in schedule and its RMS error;
    iterations: gradient steps taken."""

    times: torch.Tensor
    error: float
    start: str
    start_error: float
    iterations: int


def calibrate_schedule(score_fn, sde, x_T: torch.Tensor, *, method: str = "unipc", steps: int,
                       eps: float = 1e-3, iterations: int = 600, lr: float = 0.05, batch: int | None = None,
                       check_every: int = 50, reference_steps: int | None = None,
                       reference: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       progress: bool = False, **method_options) -> CalibratedSchedule:
    """Fit the time grid of deterministic `method` with `steps` steps to score_fn (module docstring).

    x_T: the pool of prior draws, shape (N, ...); a large pool (the benchmark's N = 128000) holds
    more of the rare hard trajectories at the same cost per iteration. batch: minibatch size
    (default min(N, 2000)), its random part drawn from `generator`. reference: the flow map's
    value for each pool draw, shaped like x_T, when you have one (e.g. a tight adaptive solve);
    default: unipc on reference_steps log-SNR steps. method_options go to every run of the method
    (e.g. order).
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable score_fn(x, t) -> tensor shaped like x, got {score_fn!r}")
    check_sde(sde)
    if method not in DETERMINISTIC:
        raise ValueError(f"method={method!r} cannot be calibrated: use a deterministic fixed-grid "
                         f"sampler, one of {', '.join(DETERMINISTIC)}")
    if method_options.get("eta", 0) != 0:
        raise ValueError(f"eta={method_options['eta']!r} is not allowed: calibrate_schedule fits the grid of the "
                         "deterministic solver (eta=0); the fitted grid can then be used with any eta")
    if "schedule" in method_options:
        raise ValueError("calibrate_schedule chooses the schedule itself: do not pass schedule=")
    check_kwargs(f"sampler {method!r}", METHODS.get(method), method_options,
                 reserved=("score_fn", "sde", "x", "steps", "eps", "generator", "progress", "project"))
    eps = check_eps(eps, sde.T)
    steps = check_count("steps", steps)
    if steps < 2:
        raise ValueError(f"steps={steps} is not allowed: a grid of one step has no time to move; use steps >= 2")
    iterations = check_count("iterations", iterations)
    check_every = check_count("check_every", check_every)
    lr = check_positive_finite("lr", lr)
    reference_steps = max(10 * steps, 200) if reference_steps is None else check_count("reference_steps",
                                                                                         reference_steps)
    if torch.is_tensor(x_T):
        check_data("x_T", x_T, half=False)
    if not torch.is_tensor(x_T) or x_T.dim() < 2 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be a batch of prior draws, shape (B, ...), got "
                         f"{tuple(x_T.shape) if torch.is_tensor(x_T) else type(x_T).__name__}")
    pool = x_T.shape[0]
    batch = min(pool, 2000) if batch is None else check_count("batch", batch)
    if batch > pool:
        raise ValueError(f"batch={batch} is not allowed: it must be at most the pool of x_T's {pool} draws")
    check_generator(generator)

    def per_draw_errors(grid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = _run(score_fn, sde, method, x, steps, grid, eps, **method_options)
        return (out - y).double().pow(2).flatten(1).mean(1)

    def pool_errors(grid: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([per_draw_errors(grid, x, y) for x, y in zip(x_T.split(CHUNK), target.split(CHUNK))])

    if reference is None:
        target = fine_grid_reference(score_fn, sde, x_T, steps=reference_steps, eps=eps)
    elif not torch.is_tensor(reference) or reference.shape != x_T.shape:
        got = tuple(reference.shape) if torch.is_tensor(reference) else repr(reference)
        raise ValueError(f"reference must be the flow map of each pool draw, shaped like x_T "
                         f"{tuple(x_T.shape)}, got {got}")
    else:
        target = reference.detach()
    start_grids = {name: time_grid(sde, steps, eps, name) for name in START_SCHEDULES}
    start_sq = {name: pool_errors(grid) for name, grid in start_grids.items()}
    start = min(start_sq, key=lambda name: float(start_sq[name].mean()))
    start_grid, ranked = start_grids[start], start_sq[start].argsort(descending=True)

    lam_T, lam_eps = (float(v) for v in sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))
    lam0 = sde.log_snr(start_grid)
    theta = torch.log(lam0.diff()[1:] / (lam0[1] - lam0[0])).detach().requires_grad_(True)
    best = [float(start_sq[start].mean()), start_grid, theta.detach().clone()]  # pool mean sq. error, grid, theta
    opt = torch.optim.Adam([theta], lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=iterations, desc=f"calibrating {method} ({steps} steps)", leave=False)
    for it in range(1, iterations + 1):
        idx, weights = _stratified_batch(ranked, batch, generator)
        with torch.enable_grad():
            loss = (weights * per_draw_errors(_grid_of(sde, theta, lam_T, lam_eps, eps), x_T[idx],
                                              target[idx])).sum()
            if torch.isfinite(loss):  # a diverged minibatch run teaches nothing: skip its step
                (theta.grad,) = torch.autograd.grad(loss, theta)  # not into a network's own parameters
                opt.step()
        decay.step()
        if it % check_every == 0 or it == iterations:
            grid = _grid_of(sde, theta.detach(), lam_T, lam_eps, eps)
            err = float(pool_errors(grid).mean())
            if err < best[0]:
                best = [err, grid, theta.detach().clone()]
            elif err > RESET * best[0]:  # wandered off into a worse basin: go back to the best grid
                with torch.no_grad():
                    theta.copy_(best[2])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rms=f"{math.sqrt(best[0]):.3g}")
    if bar is not None:
        bar.close()
    return CalibratedSchedule(best[1], math.sqrt(best[0]), start, math.sqrt(float(start_sq[start].mean())),
                              iterations)


def fine_grid_reference(score_fn, sde, x_T: torch.Tensor, *, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """The flow map x_T -> x0_hat approximated by `unipc` on `steps` log-SNR steps and the final
    Tweedie step (calibrate_schedule's default reference), CHUNK draws at a time."""
    with torch.no_grad():
        return torch.cat([_run(score_fn, sde, "unipc", x, steps, "log_snr", eps) for x in x_T.split(CHUNK)])


def _run(score_fn, sde, method: str, x: torch.Tensor, steps: int, grid, eps: float, **options) -> torch.Tensor:
    """One run of a registered method on `grid` and the final Tweedie step, differentiable in the grid
    (no `sample` wrapper: it runs under no_grad)."""
    out, _ = METHODS.get(method)(score_fn, sde, x, steps=steps, eps=eps, generator=None, progress=False,
                                 project=None, schedule=grid, **options)
    return tweedie_denoise(score_fn, sde, out, torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device))


def _grid_of(sde, theta: torch.Tensor, lam_T: float, lam_eps: float, eps: float) -> torch.Tensor:
    """The grid t(lambda(theta)) (module docstring), differentiable in theta: t is found by the SDE's
    inverse log-SNR and carries the gradient dt/dlambda = 1/lambda'(t) (one Newton step from it),
    so SDEs whose inverse is a bisection are differentiated alike."""
    w = torch.exp(torch.cat([theta.new_zeros(1), theta]))
    lam = lam_T + (lam_eps - lam_T) * torch.cat([theta.new_zeros(1), torch.cumsum(w, 0) / w.sum()])
    t = sde.t_of_log_snr(lam.detach()).to(torch.float64)
    t[0], t[-1] = sde.T, eps
    if not theta.requires_grad:
        return t
    with torch.enable_grad():
        at = t.clone().requires_grad_(True)
        slope = torch.autograd.grad(sde.log_snr(at).sum(), at)[0]
    return t + (lam - sde.log_snr(t)) / slope


def _stratified_batch(ranked: torch.Tensor, batch: int, generator: torch.Generator | None):
    """Indices and weights (summing to 1) of a fitting batch of `batch` draws out of N = len(ranked),
    the pool's indices by descending error (ranked once, drawn from every iteration): the h = batch // 4
    largest errors at 1/N plus a uniform draw of the rest at (N - h) / ((batch - h) N) (module
    docstring; batch = N gives every draw once at 1/N)."""
    pool = ranked.shape[0]
    hard = batch // 4
    rest = ranked[hard:]
    drawn = rest[torch.randperm(rest.shape[0], generator=generator)[:batch - hard]]
    weights = torch.cat([torch.ones(hard, dtype=torch.float64),
                         torch.full((batch - hard,), (pool - hard) / (batch - hard), dtype=torch.float64)])
    return torch.cat([ranked[:hard], drawn]), weights / pool
