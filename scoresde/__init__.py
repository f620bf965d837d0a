"""scoresde: score-based generative modelling through stochastic differential equations."""

from .sdes import (SDE, CosineVPSDE, KernelSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, get_sde,
                   list_sdes, register_sde)

__version__ = "0.1.0"

__all__ = ["SDE", "KernelSDE", "ReverseSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE",
           "register_sde", "get_sde", "list_sdes"]
