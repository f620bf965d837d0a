"""Heun's second-order sampler of the probability-flow ODE (Karras et al. 2022, Algorithm 1).

For any SDE (not only EDM's), with the flow's velocity v(x, t) = f(x, t) - g(t)^2 score(x, t) / 2
(Song et al. 2021, eq. 13) on a grid T = t_0 > ... > t_n = eps:

    x'      = x_i + (t_{i+1} - t_i) v(x_i, t_i)                          (Euler predictor)
    x_{i+1} = x_i + (t_{i+1} - t_i) [v(x_i, t_i) + v(x', t_{i+1})] / 2    (trapezoidal corrector)

Two score evaluations per step. EDM skips the corrector on its last step because it ends at
sigma = 0; here the grid ends at eps > 0, so every step is corrected. The default grid is Karras'
rho = 7 schedule (scoresde's "karras" schedule, mapped to t through the SDE's log-SNR).
scoresde's own `edm` sampler (Algorithm 2, with churn, in EDM's variables x / alpha and
sigma / alpha) is the one to use; this one shows how a sampler plugin is written.
"""

from __future__ import annotations

from scoresde.sampling.common import step_pairs, times_like
from scoresde.sampling.schedules import time_grid


def edm_heun(score_fn, sde, x, *, steps=None, eps, generator, progress, project, schedule="karras"):
    """Heun steps of the probability-flow ODE from t = T to eps (module docstring); 18 steps by default."""
    steps = steps or 18
    flow = sde.reverse(score_fn, probability_flow=True)
    ts = time_grid(sde, steps, eps, schedule)
    for _, t, s in step_pairs(ts, progress, "edm_heun"):
        t_b, s_b = times_like(t, x), times_like(s, x)
        h = float(s - t)                       # negative: time runs backwards
        v = flow.sde(x, t_b)[0]
        x_pred = x + h * v
        x = x + h * (v + flow.sde(x_pred, s_b)[0]) / 2
        if project is not None:               # e.g. inpainting: re-impose the known pixels at time s
            x = project(x, s, generator)
    return x, {"steps": steps, "times": ts}
