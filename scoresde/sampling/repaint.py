"""RePaint (Lugmayr et al. 2022): inpainting by replacement with resampling.

After each ancestral step t -> s and the replacement of the known entries by a draw of their
forward marginal (`Inpainting`), the state is pushed back to t through the forward kernel
x_t = a x_s + G z and the step is redone, `resample` times in all (jump length 1). Each round lets
the generated entries adjust to the known ones, which plain replacement (resample=1) never does:
the bias of replacement falls as resample grows. Costs steps * resample score evaluations.
"""

from __future__ import annotations

import math

from .common import randn_like, step_pairs
from .schedules import time_grid
from .sde_solvers import ancestral_step, kernel_transition


def repaint(score_fn, sde, x, *, steps=None, eps, generator, progress, project, resample: int = 10,
            schedule="uniform_t"):
    """RePaint with `resample` rounds per step (default 100 steps), for guidance=Inpainting(...).
    Without a projection it is an ancestral sampler that re-noises and redoes each step (the
    marginals are unchanged, so the result is still a sample of the model, at resample times the cost)."""
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an integer >= 1, got {resample!r}")
    steps = steps or 100
    ts = time_grid(sde, steps, eps, schedule)
    for _, t, s in step_pairs(ts, progress, "repaint"):
        a, g2 = kernel_transition(sde, s, t)
        for round_ in range(resample):
            x_s = ancestral_step(score_fn, sde, x, t, s, generator)
            if project is not None:
                x_s = project(x_s, s, generator)
            if round_ < resample - 1:
                x = a * x_s + math.sqrt(g2) * randn_like(x_s, generator)
        x = x_s
    return x, {"steps": steps, "times": ts, "resample": resample}
