"""scoresde plugin: the EDM schedule (Karras et al. 2022), its Heun sampler and its training loss.

Nothing here is imported by scoresde until a config or a call asks for `edm` (SDE or loss) or `edm_heun`; the
entry points in pyproject.toml are the only link.
"""

from .heun import edm_heun
from .loss import edm_loss, edm_weight
from .sde import EDMSDE

__all__ = ["EDMSDE", "edm_heun", "edm_loss", "edm_weight"]
