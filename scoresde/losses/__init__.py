"""Training losses: weighted denoising score matching (continuous t), DDPM, SMLD, VDM's bound, the classifier's.

`LOSSES` maps the names a config uses to the score-model losses, each called as
loss(model, sde, x0, y=None, **options) -> scalar (per-sample with reduce=False).
"""

from __future__ import annotations

from .classifier import classifier_loss
from .dsm import chain_marginals, ddpm_loss, drop_labels, dsm_loss, smld_loss
from .vdm import vdm_loss
from .weighting import T_SAMPLINGS, WEIGHTINGS, importance_density, loss_weight, sample_t

LOSSES = {"dsm": dsm_loss, "ddpm": ddpm_loss, "smld": smld_loss, "vdm": vdm_loss}

__all__ = ["dsm_loss", "ddpm_loss", "smld_loss", "vdm_loss", "classifier_loss", "LOSSES", "WEIGHTINGS",
           "T_SAMPLINGS", "loss_weight", "sample_t", "importance_density", "chain_marginals", "drop_labels"]
