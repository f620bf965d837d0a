"""Training loss of a noise-conditional classifier for classifier guidance (Song et al. 2021 App. I.1;
Dhariwal & Nichol 2021): cross-entropy of p(y | x_t, t) on inputs noised by the SDE's kernel,

    L = E_{t ~ U[eps, T]} E_{x_0, y, eps} [ -log p_phi(y | alpha(t) x_0 + sigma(t) eps, t) ],

with t drawn by any scheme of weighting.sample_t (importance factors applied, so all estimate this L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sdes.base import batch_view
from .dsm import _check_data
from .weighting import check_t_sampling, sample_t


def classifier_loss(classifier, sde, x0: torch.Tensor, y: torch.Tensor, *, t_sampling: str = "uniform",
                    eps: float = 1e-5, generator: torch.Generator | None = None,
                    reduce: bool = True) -> torch.Tensor:
    """Cross-entropy of classifier(x_t, t) -> logits (e.g. models.ClassifierModel) against labels y."""
    check_t_sampling(t_sampling)
    _check_data(x0)
    if not torch.is_tensor(y) or y.shape != (x0.shape[0],) or torch.is_floating_point(y):
        raise ValueError(f"y must be a (batch,) = ({x0.shape[0]},) integer tensor of labels, "
                         f"got {getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    t, q = sample_t(sde, x0.shape[0], t_sampling, eps, generator=generator, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = batch_view(sde.alpha(t), x0) * x0 + batch_view(sde.sigma(t), x0) * noise
    logits = classifier(x_t, t)
    if logits.dim() != 2 or logits.shape[0] != x0.shape[0]:
        raise ValueError(f"the classifier must return logits of shape ({x0.shape[0]}, num_classes), "
                         f"got {tuple(logits.shape)}")
    per_sample = q * F.cross_entropy(logits, y.long(), reduction="none")
    return per_sample.mean() if reduce else per_sample
