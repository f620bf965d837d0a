"""Samplers: one entry point, `sample`, over a registry of methods, each taking a plain score_fn(x, t).

A method is a function

    method(score_fn, sde, x_T, *, steps, eps, generator, progress, project, **options)
        -> (x_eps, info: dict)

that carries x_T at t = T to t = eps (`steps` may be None for its default; `project(x, t,
generator)`, when not None, must be applied after each step, or the method must refuse it). Add one
with `@register_sampler("name")` or the entry-point group `scoresde.samplers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import Registry
from ..sdes.base import check_steps
from .denoise import tweedie_denoise
from .exponential import ddim, dpmpp_2m, dpmpp_3m
from .guidance import (ClassifierFreeGuidance, ClassifierGuidance, GradientGuidance, Guidance,
                       GuidanceSum, Inpainting, check_output, split_guidance)
from .langevin import annealed_langevin, pc
from .ode import ode
from .schedules import SCHEDULES, time_grid
from .sde_solvers import ancestral, euler_maruyama, reverse_diffusion
from .sde_torchsde import torchsde_method

METHODS = Registry("sampler", "scoresde.samplers", builtins={
    "euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
    "torchsde": torchsde_method, "pc": pc, "annealed_langevin": annealed_langevin,
    "ode": ode, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m,
})


def register_sampler(name: str, *, overwrite: bool = False):
    """Decorator registering a sampler function under `name` (see the module docstring)."""
    return METHODS.register(name, overwrite=overwrite)


def list_samplers() -> list[str]:
    return METHODS.names()


@dataclass
class SamplingInfo:
    """What a run did. nfe counts evaluations of the (guided) score, the final denoising step included."""
    method: str
    nfe: int
    steps: int | None
    times: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class _CountingScore:
    """Wrap score_fn: count evaluations and check every output is finite and shaped like x."""

    def __init__(self, score_fn, name: str):
        self.score_fn, self.name, self.nfe = score_fn, name, 0

    def __call__(self, x, t):
        self.nfe += 1
        return check_output(self.score_fn(x, t), x, self.name)


def _initial_state(sde, shape, x_T, generator):
    if x_T is None:
        if shape is None:
            raise ValueError("pass shape=(batch, ...) or an initial state x_T")
        shape = tuple(shape)
        if len(shape) < 2 or any(int(n) < 1 for n in shape):
            raise ValueError(f"shape={shape} is not allowed: it must be (batch, *data_shape) with positive sizes")
        return sde.prior_sampling(shape, generator=generator)
    if not torch.is_tensor(x_T) or not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor, got {type(x_T).__name__}")
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested")
    if x_T.dim() < 2:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}; it must be (batch, *data_shape)")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains non-finite values")
    return x_T.detach().clone()


@torch.no_grad()
def sample(score_fn, sde, shape=None, *, method: str, steps: int | None = None, eps: float = 1e-3,
           x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, guidance=None,
           denoise: bool = True, progress: bool = False, return_info: bool = False, **method_options):
    """Draw samples by running `method` from x_T ~ prior (or the given x_T) at t = T down to t = eps.

    score_fn(x, t) -> grad log p_t(x), t a (B,) tensor. guidance: a `Guidance` term, a plain
    callable grad_fn(x, t) (added to the score), an `Inpainting`, or a list of these. denoise: end
    with Tweedie's x0 = (x + sigma^2 score)/alpha at eps. Returns the samples, or (samples,
    SamplingInfo) with return_info=True. method_options go to the method (see its docstring).
    """
    fn = METHODS.get(method)
    if steps is not None:
        steps = check_steps("steps", steps)
    eps = float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps={eps} is not allowed: it must lie in (0, T={sde.T})")
    x = _initial_state(sde, shape, x_T, generator)
    term, projection = split_guidance(guidance)
    if projection is not None:
        projection.check(x)
    counted = _CountingScore(score_fn if term is None else term.apply(score_fn),
                             "score_fn" if term is None else f"the score guided by {term!r}")
    x, extra = fn(counted, sde, x, steps=steps, eps=eps, generator=generator, progress=progress,
                  project=projection, **method_options)
    if denoise:
        x = tweedie_denoise(counted, sde, x, torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device))
    if projection is not None:
        x = projection.finalize(x)
    if not return_info:
        return x
    extra = dict(extra)
    info = SamplingInfo(method=method, nfe=counted.nfe, steps=extra.pop("steps", steps),
                        times=extra.pop("times", None), extra=extra)
    return x, info


__all__ = ["sample", "METHODS", "register_sampler", "list_samplers", "SamplingInfo", "time_grid",
           "SCHEDULES", "tweedie_denoise", "Guidance", "GuidanceSum", "ClassifierGuidance",
           "ClassifierFreeGuidance", "GradientGuidance", "Inpainting"]
