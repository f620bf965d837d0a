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
from ..sdes.base import (MIN_EPS, check_data, check_generator, check_kwargs, check_positive_finite,
                         check_sde, check_shape, check_steps)
from .calibration import CalibratedSchedule, calibrate_schedule
from .denoise import tweedie_denoise
from .exponential import ddim, dpmpp_2m, dpmpp_3m
from .guidance import (ClassifierFreeGuidance, ClassifierGuidance, GradientGuidance, Guidance,
                       GuidanceSum, Inpainting, check_output, format_time, listed, nonfinite_samples,
                       split_guidance)
from .langevin import annealed_langevin, pc
from .ode import ode
from .schedules import SCHEDULES, time_grid
from .sde_solvers import ancestral, euler_maruyama, reverse_diffusion
from .sde_torchsde import torchsde_method
from .unipc import unipc

METHODS = Registry("sampler", "scoresde.samplers", builtins={
    "euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
    "torchsde": torchsde_method, "pc": pc, "annealed_langevin": annealed_langevin,
    "ode": ode, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc,
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
    """Wrap score_fn: count evaluations, check each output is shaped like x, and check that the state
    x the method passes in and the score coming out are finite, so that a diverging run stops at the
    time it diverged (for every method: fixed-step loops, torchdiffeq and torchsde all call the score)
    instead of returning NaN. One isfinite pass over x and the score per call."""

    def __init__(self, score_fn, name: str, method: str):
        self.score_fn, self.name, self.method, self.nfe = score_fn, name, method, 0

    def __call__(self, x, t):
        self.nfe += 1
        check_finite_state(x, t, f"method {self.method!r}")
        return check_output(self.score_fn(x, t), x, self.name, t)


def _initial_state(sde, shape, x_T, generator):
    if shape is not None:
        shape = check_shape("shape", shape)
        if len(shape) < 2:
            raise ValueError(f"shape={shape} is not allowed: it must be (batch, *data_shape), e.g. (16, 2)")
    if x_T is None:
        if shape is None:
            raise ValueError("pass shape=(batch, ...) or an initial state x_T")
        return sde.prior_sampling(shape, generator=generator)
    check_data("x_T", x_T, half=False)
    if shape is not None and shape != tuple(x_T.shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={shape} was requested")
    if x_T.dim() < 2 or x_T.shape[0] == 0 or x_T.numel() == 0:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}; it must be (batch, *data_shape) with sizes >= 1")
    finite = torch.isfinite(x_T.flatten(1)).all(1)
    if not bool(finite.all()):
        raise ValueError(f"x_T contains non-finite values (NaN or inf) in samples "
                         f"{(~finite).nonzero().flatten().tolist()[:10]}")
    return x_T.detach().clone()


def check_finite_state(x: torch.Tensor, t, where: str) -> None:
    """Raise ValueError naming the time and the samples if the sampler's state x is not finite."""
    bad = nonfinite_samples(x)
    if not bad:
        return
    raise ValueError(f"the samples became non-finite (NaN or inf) in {where} before t={format_time(t, bad)} "
                     f"for samples {listed(bad)}: the previous step diverged "
                     f"(check the score's scale near that time, or use more steps)")


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
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable score_fn(x, t) -> tensor shaped like x, got {score_fn!r}")
    check_sde(sde)
    if not isinstance(method, str):
        raise TypeError(f"method must be a sampler name (one of {', '.join(list_samplers())}), got {method!r}")
    fn = METHODS.get(method)
    check_kwargs(f"sampler {method!r}", fn, method_options,
                 reserved=("score_fn", "sde", "x", "steps", "eps", "generator", "progress", "project"))
    if steps is not None:
        steps = check_steps("steps", steps)
    elif torch.is_tensor(method_options.get("schedule")):  # an explicit grid fixes the step count
        steps = max(1, method_options["schedule"].numel() - 1)
    eps = check_positive_finite("eps", eps)
    if not MIN_EPS <= eps < sde.T:
        raise ValueError(f"eps={eps!r} is not allowed: it must lie in [{MIN_EPS:g}, T={sde.T}) "
                         f"(below {MIN_EPS:g} float32 times lose their resolution)")
    check_generator(generator)
    for name, flag in (("denoise", denoise), ("progress", progress), ("return_info", return_info)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    x = _initial_state(sde, shape, x_T, generator)
    term, projection = split_guidance(guidance)
    if projection is not None:
        projection.check(x)
    counted = _CountingScore(score_fn if term is None else term.apply(score_fn),
                             "score_fn" if term is None else f"the score guided by {term!r}", method)
    x, extra = fn(counted, sde, x, steps=steps, eps=eps, generator=generator, progress=progress,
                  project=projection, **method_options)
    check_finite_state(x, eps, f"the last step of method {method!r}, which ends at eps")
    if denoise:
        x = tweedie_denoise(counted, sde, x, torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device))
        check_finite_state(x, eps, "the final denoising step, at eps")
    if projection is not None:
        x = projection.finalize(x)
    if not return_info:
        return x
    extra = dict(extra)
    info = SamplingInfo(method=method, nfe=counted.nfe, steps=extra.pop("steps", steps),
                        times=extra.pop("times", None), extra=extra)
    return x, info


__all__ = ["sample", "calibrate_schedule", "CalibratedSchedule", "METHODS", "register_sampler",
           "list_samplers", "SamplingInfo", "time_grid", "SCHEDULES", "tweedie_denoise", "Guidance",
           "GuidanceSum", "ClassifierGuidance", "ClassifierFreeGuidance", "GradientGuidance", "Inpainting"]
