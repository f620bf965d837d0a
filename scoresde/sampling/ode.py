"""Probability-flow ODE sampler through torchdiffeq (Song et al. 2021, eq. 13):

    dx/dt = f(x, t) - g(t)^2 score(x, t) / 2,   integrated from t = T down to t = eps.

Adaptive solvers (dopri5 by default, rtol = atol = 1e-5 as in score_sde) take one step size for the
whole batch, but the error is controlled per sample: the norm handed to torchdiffeq is the largest
per-sample RMS of the scaled error, max_b sqrt(mean_d (e_bd / (atol + rtol |x_bd|))^2), so every
sample meets the tolerance (torchdiffeq's default RMS over the whole batch lets one hard sample be
wrong by far more than rtol when its batch-mates are easy: in a 2-D mixture's likelihood at tol
1e-3 it left one sample 1.2 nats off). Steps are clipped to land on eps, so the score is never queried
below it (nor above T: the first step is set to (T - eps)/100). Fixed-step solvers (euler, midpoint, rk4, ...) step on a schedule's grid instead.
"""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from .._checks import check_positive_finite
from .common import no_projection
from .schedules import time_grid

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_SOLVERS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")


def per_sample_rms_max(error_ratio: torch.Tensor) -> torch.Tensor:
    """max over the batch of each sample's RMS: the error norm used by the adaptive solvers."""
    return error_ratio.reshape(error_ratio.shape[0], -1).pow(2).mean(1).sqrt().max()


def ode(score_fn, sde, x, *, steps=None, eps, generator, progress, project, solver="dopri5",
        rtol=1e-5, atol=1e-5, schedule="uniform_t"):
    """Integrate the probability-flow ODE from x_T at t = T to t = eps with torchdiffeq.

    `solver` is any torchdiffeq method: adaptive ones use rtol/atol and no `steps`; fixed-step
    ones need `steps` and step on `time_grid(sde, steps, eps, schedule)`.
    """
    no_projection("ode", project)
    flow = sde.reverse(score_fn, probability_flow=True)
    if solver in FIXED_SOLVERS:
        if steps is None:
            raise ValueError(f"ode solver {solver!r} is fixed-step: pass steps (e.g. steps=50)")
        grid = time_grid(sde, steps, eps, schedule).to(x.dtype)
        out = odeint(flow, x, grid, method=solver)
        return out[-1], {"steps": steps, "times": grid}
    if solver not in ADAPTIVE_SOLVERS:
        raise ValueError(f"unknown ode solver {solver!r}; adaptive: {', '.join(ADAPTIVE_SOLVERS)}; "
                         f"fixed-step: {', '.join(FIXED_SOLVERS)}")
    if steps is not None:
        raise ValueError(f"steps={steps} is not allowed with the adaptive ode solver {solver!r}, which "
                         "chooses its own steps from rtol/atol; pass solver='rk4' (or euler, midpoint) "
                         "for a fixed number of steps")
    rtol, atol = check_positive_finite("rtol", rtol), check_positive_finite("atol", atol)
    t = torch.tensor([sde.T, eps], dtype=x.dtype, device=x.device)
    # An explicit first step keeps torchdiffeq's initial-step heuristic from probing t outside [eps, T].
    options = {"norm": per_sample_rms_max, "step_t": t[1:], "first_step": 1e-2 * (sde.T - eps)}
    out = odeint(flow, x, t, method=solver, rtol=rtol, atol=atol, options=options)
    return out[-1], {"steps": None, "times": t, "rtol": rtol, "atol": atol}
