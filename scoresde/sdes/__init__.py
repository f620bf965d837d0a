"""SDE families with closed-form perturbation kernels, and the SDE registry."""

from __future__ import annotations

from ..registry import Registry
from .._checks import check_kwargs
from .base import SDE, ReverseSDE, batch_view
from .cosine import CosineVPSDE
from .kernel import KernelSDE
from .learned import LearnedSDE, MonotoneGamma
from .tabulated import TabulatedVPSDE
from .subvp import SubVPSDE
from .ve import VESDE
from .vp import VPSDE

SDES = Registry("SDE", "scoresde.sdes",
                builtins={"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE,
                          "learned": LearnedSDE})


def register_sde(name: str, *, overwrite: bool = False):
    """Class decorator registering an SDE under `name`: `@scoresde.register_sde("edm")`."""
    return SDES.register(name, overwrite=overwrite)


def get_sde(name: str, **kwargs) -> SDE:
    """Build the SDE registered (or installed through the `scoresde.sdes` entry point) as `name`."""
    if not isinstance(name, str):
        raise TypeError(f"the SDE name must be a string such as 'vp', got {name!r}")
    cls = SDES.get(name)
    check_kwargs(f"SDE {name!r}", cls, kwargs)
    return cls(**kwargs)


def list_sdes() -> list[str]:
    """Names of all registered and installed SDEs."""
    return SDES.names()


__all__ = ["SDE", "ReverseSDE", "KernelSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "LearnedSDE",
           "MonotoneGamma", "TabulatedVPSDE", "register_sde", "get_sde", "list_sdes", "batch_view", "SDES"]
