"""scoresde plugin: the EDM schedule (Karras et al. 2022) and its Heun sampler.

Nothing here is imported by scoresde until a config or a call asks for `edm` or `edm_heun`; the
entry points in pyproject.toml are the only link.
"""

from .heun import edm_heun
from .sde import EDMSDE

__all__ = ["EDMSDE", "edm_heun"]
