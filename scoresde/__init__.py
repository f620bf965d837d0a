"""scoresde: score-based generative modelling through stochastic differential equations."""

from .interop.export import load, save_pretrained
from .likelihood import bits_per_dim, log_likelihood
from .losses import list_losses, register_loss
from .sampling import calibrate_schedule, list_samplers, register_sampler, sample
from .sdes import (SDE, CosineVPSDE, KernelSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, get_sde,
                   list_sdes, register_sde)

__version__ = "0.1.0"

__all__ = ["SDE", "KernelSDE", "ReverseSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE",
           "register_sde", "get_sde", "list_sdes", "sample", "list_samplers", "register_sampler",
           "register_loss", "list_losses",
           "calibrate_schedule", "log_likelihood", "bits_per_dim", "save_pretrained", "load"]
