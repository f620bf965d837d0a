"""A time grid from a short pilot fit: `calibrate_schedule` on a small seeded pool of prior draws.

At 10-20 steps a solver's error depends on where its steps lie far more than any closed-form
grid captures: grids fitted by `calibrate_schedule` have 2-25x lower error than the best built-in one on
the benchmark mixtures (docs/benchmarks.md), and the fitted grids differ between models. The
pilot is that fit made short and reproducible: POOL prior draws from a fixed seed (so the grid
is a function of the model, the SDE, steps, eps and the sample shape, not of the batch being
sampled), a reference by `unipc` on max(10 steps, 200) log-SNR steps, and ITERATIONS Adam steps on
stratified minibatches of BATCH draws, the best grid on the whole pool (the start, the best
built-in grid, included) kept. On the 64-D VE benchmark mixture at NFE 10 (5000 measured draws) a
pool of 1024 left the error at 0.75x k-diffusion's best (its few hard draws under-sampled), 4096
brought it to 0.39x (experiments/results/default_grid.txt).

Cost, in evaluations of the score per draw: POOL x reference_steps for the reference, about
3 x steps x BATCH x ITERATIONS through the fit (forward and backward), steps x POOL per check and
per built-in start grid. Counted in experiments/bench/default_grid.py: 1.37, 1.91 and 4.72 million
draw-evaluations (1271, 2341 and 5841 calls of at most POOL draws) at steps = 9, 19 and 49. That is
4-10 s at 9-19 steps on the benchmark's closed-form mixture scores (one CPU thread), and on a
network the cost of sampling about 10^5 draws, so it pays only where many samples share one grid: compute it once
with `pilot_schedule` and pass the tensor as `schedule=` to every call.
"""

from __future__ import annotations

import torch

from .._checks import check_count, check_sde
from .calibration import calibrate_schedule

POOL = 4096
BATCH = 256
ITERATIONS = 100
CHECK_EVERY = 25


def pilot_schedule(score_fn, sde, steps: int, eps: float, shape, *, method: str = "unipc", seed: int = 0,
                   pool: int = POOL, iterations: int = ITERATIONS, dtype: torch.dtype = torch.float64,
                   device=None, **method_options) -> torch.Tensor:
    """The (steps + 1,) float64 grid T > ... > eps fitted to score_fn by a short `calibrate_schedule`
    run on `pool` prior draws of one sample's `shape` from torch's generator seeded with `seed`
    (module docstring). Deterministic given its arguments. method_options (e.g. order) go to the method."""
    check_sde(sde)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape={shape!r} is not allowed: it must be one sample's shape, a tuple of ints >= 1 "
                         "such as x.shape[1:]")
    pool = check_count("pool", pool)
    generator = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sampling((pool, *shape), generator=generator, dtype=dtype).to(device or "cpu")
    fit = calibrate_schedule(score_fn, sde, x_T, method=method, steps=steps, eps=eps, iterations=iterations,
                             batch=min(BATCH, pool), check_every=min(CHECK_EVERY, iterations),
                             generator=generator, **method_options)
    return fit.times.detach()
