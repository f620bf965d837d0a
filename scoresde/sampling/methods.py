"""The registry of sampling methods, each taking a plain score_fn(x, t).

A method is a function

    method(score_fn, sde, x_T, *, steps, eps, generator, progress, project, **options)
        -> (x_eps, info: dict)

that carries x_T at t = T to t = eps (`steps` may be None for its default; `project(x, t,
generator)`, when not None, must be applied after each step, or the method must refuse it). Add one
with `@register_sampler("name")` or the entry-point group `scoresde.samplers`.
"""

from __future__ import annotations

from ..registry import Registry
from .edm import edm
from .exponential import ddim, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde, unipc
from .langevin import annealed_langevin, pc
from .ode import ode
from .repaint import repaint
from .sde_solvers import ancestral, euler_maruyama, reverse_diffusion
from .sde_torchsde import torchsde_method

METHODS = Registry("sampler", "scoresde.samplers", builtins={
    "euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
    "torchsde": torchsde_method, "pc": pc, "annealed_langevin": annealed_langevin,
    "ode": ode, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc,
    "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m_sde": dpmpp_3m_sde, "edm": edm, "repaint": repaint,
})


def register_sampler(name: str, *, overwrite: bool = False):
    """Decorator registering a sampler function under `name` (see the module docstring)."""
    return METHODS.register(name, overwrite=overwrite)


def list_samplers() -> list[str]:
    """Names of all registered and installed samplers."""
    return METHODS.names()
