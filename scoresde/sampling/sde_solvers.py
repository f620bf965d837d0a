"""Fixed-step reverse-SDE samplers as plain torch loops (2-20x cheaper per step on a CPU than
torchsde 0.2.6 with its BrownianInterval), one predictor step per function so `pc` can reuse them.

Each step maps x at time t to time s < t on the grid, with fresh per-sample noise z ~ N(0, I).
`reverse_diffusion` and `ancestral` use the forward chain between the two grid times given by the
kernel, x_t = a x_s + G z with a = alpha(t)/alpha(s), G^2 = sigma(t)^2 - a^2 sigma(s)^2: this is
DDPM's chain (beta_i = 1 - a^2) for VP and SMLD's (G^2 = sigma_i^2 - sigma_{i-1}^2) for VE, on any
grid and for any kernel SDE (for VE on the grid t_i = i/(N-1) it is `sde.discretize` exactly).
"""

from __future__ import annotations

import math

import torch

from ..sdes.base import batch_view
from .common import randn_like, step_pairs, times_like
from .denoise import tweedie
from .schedules import time_grid


def kernel_transition(sde, s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """(a, G^2) of the forward transition x_t = a x_s + G z, s < t (float64 scalars)."""
    st = torch.stack([torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)])
    alpha, sigma = sde.alpha(st), sde.sigma(st)
    a = float(alpha[1] / alpha[0])
    return a, float(sigma[1] ** 2 - a ** 2 * sigma[0] ** 2)


def euler_maruyama_step(score_fn, sde, x, t, s, generator):
    """x_s = x_t + [f - g^2 score](x_t, t) (s - t) + g(t) sqrt(t - s) z  (Song et al. eq. 6, Euler-Maruyama)."""
    drift, diffusion = sde.reverse(score_fn).sde(x, times_like(t, x))
    dt = float(s - t)
    return x + drift * dt + batch_view(diffusion, x) * math.sqrt(-dt) * randn_like(x, generator)


def reverse_diffusion_step(score_fn, sde, x, t, s, generator):
    """Song et al.'s reverse-diffusion predictor (eq. 46): x_s = x_t - f + G^2 score + G z, f = (a - 1) x_t."""
    a, g2 = kernel_transition(sde, s, t)
    score = score_fn(x, times_like(t, x))
    return (2 - a) * x + g2 * score + math.sqrt(g2) * randn_like(x, generator)


def ancestral_step(score_fn, sde, x, t, s, generator):
    """Ancestral step: draw x_s from q(x_s | x_t, x0_hat), the chain's posterior at the Tweedie estimate
    x0_hat = (x_t + sigma_t^2 score)/alpha_t (Ho et al. 2020 eq. 7):
    mean = alpha_s G^2/sigma_t^2 x0_hat + a sigma_s^2/sigma_t^2 x_t,  var = G^2 sigma_s^2/sigma_t^2.
    For VE this is SMLD's x_s = x_t + G^2 score + G sigma_s/sigma_t z (Song et al. App. F)."""
    a, g2 = kernel_transition(sde, s, t)
    st = torch.tensor([float(s), float(t)], dtype=torch.float64)
    (alpha_s, alpha_t), (sigma_s, sigma_t) = sde.alpha(st).tolist(), sde.sigma(st).tolist()
    score = score_fn(x, times_like(t, x))
    x0 = tweedie(x, score, alpha_t, sigma_t)
    mean = (alpha_s * g2 / sigma_t ** 2) * x0 + (a * sigma_s ** 2 / sigma_t ** 2) * x
    return mean + math.sqrt(g2) * (sigma_s / sigma_t) * randn_like(x, generator)


PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
              "ancestral": ancestral_step}


def run_predictor(step, score_fn, sde, x, *, steps, eps, generator, progress, project,
                  schedule="uniform_t", desc="sampling"):
    """Loop one predictor step over the grid T = t_0 > ... > t_steps = eps."""
    ts = time_grid(sde, steps, eps, schedule)
    for _, t, s in step_pairs(ts, progress, desc):
        x = step(score_fn, sde, x, t, s, generator)
        if project is not None:
            x = project(x, s, generator)
    return x, {"steps": steps, "times": ts}


def _predictor_method(name: str, default_steps: int):
    step = PREDICTORS[name]

    def method(score_fn, sde, x, *, steps=None, eps, generator, progress, project, schedule="uniform_t"):
        return run_predictor(step, score_fn, sde, x, steps=steps or default_steps, eps=eps,
                             generator=generator, progress=progress, project=project,
                             schedule=schedule, desc=name)

    method.__name__ = name
    method.__doc__ = f"Reverse-SDE sampler looping `{step.__name__}` (default {default_steps} steps).\n\n{step.__doc__}"
    return method


euler_maruyama = _predictor_method("euler_maruyama", 1000)
reverse_diffusion = _predictor_method("reverse_diffusion", 1000)
ancestral = _predictor_method("ancestral", 1000)
