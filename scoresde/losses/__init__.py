"""Training losses: weighted denoising score matching (continuous t), DDPM, SMLD, VDM's bound, the classifier's.

`LOSSES` is the registry of the names a config's `train.loss` uses (entry-point group
`scoresde.losses`, so a plugin can add one); each is called as
loss(model, sde, x0, y=None, *, generator, reduce, **options) -> scalar (per-sample with reduce=False),
its other keyword arguments being its hyperparameters (the config's train.* options and `[loss]` table).

A loss is best written in two parts (`split.py`), as the built-in ones are:
@SplitLoss over prepare(model, sde, x0, y=None, *, generator, **options), which makes the step's
draws once and returns an object whose per_sample(forward, lo, hi) runs the network on rows lo:hi
(`NoisedBatch` for the denoising losses). The Trainer prepares once a step and runs a pass per
micro-batch (train.micro_batch) or per process's rows (torchrun). A plain callable trains too, but
each pass replays the draws and the whole loss's elementwise work on the whole batch.
"""

from __future__ import annotations

from ..registry import Registry
from .classifier import classifier_loss
from .dsm import chain_marginals, ddpm_loss, drop_labels, dsm_loss, smld_loss
from .noised import NoisedBatch, noised_batch, weighted_error
from .split import RowLosses, RowsModel, SplitLoss
from .vdm import vdm_loss
from .weighting import T_SAMPLINGS, WEIGHTINGS, importance_density, loss_weight, sample_t

LOSSES = Registry("loss", "scoresde.losses",
                  builtins={"dsm": dsm_loss, "ddpm": ddpm_loss, "smld": smld_loss, "vdm": vdm_loss})


def register_loss(name: str, *, overwrite: bool = False):
    """Function decorator registering a training loss under `name`: `@scoresde.register_loss("edm")`."""
    return LOSSES.register(name, overwrite=overwrite)


def list_losses() -> list[str]:
    """Names of all registered and installed training losses."""
    return LOSSES.names()


__all__ = ["dsm_loss", "ddpm_loss", "smld_loss", "vdm_loss", "classifier_loss", "LOSSES", "register_loss",
           "list_losses", "SplitLoss", "RowLosses", "RowsModel", "NoisedBatch", "noised_batch", "weighted_error",
           "WEIGHTINGS", "T_SAMPLINGS", "loss_weight", "sample_t", "importance_density", "chain_marginals",
           "drop_labels"]
