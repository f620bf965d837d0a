"""A diffusers model (e.g. a `UNet2DModel` with its `DDPMScheduler`) as a scoresde score and SDE.

diffusers trains a network on the discrete chain x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) z,
k = 0..N-1, with abar = `scheduler.alphas_cumprod`. `from_diffusers` returns

* the SDE: `TabulatedVPSDE(alphas_cumprod)`, whose alpha(t)^2 equals abar_k at t = (k + 1) / N
  (t = 1/N is timestep 0, t = T = 1 timestep N - 1; see scoresde.sdes.tabulated for the
  interpolation in between and below 1/N);
* the score: the network is called as `unet(x, k(t)).sample` at the real-valued timestep
  k(t) = N t - 1 (an integer on the grid; diffusers' sinusoidal embedding takes any real), and its
  prediction (`scheduler.config.prediction_type`: `epsilon`, `sample` = x0, or `v_prediction`)
  becomes a score by scoresde.models.parametrization.convert.

Any scheduler holding `alphas_cumprod` describes the same trained model (DDPM, DDIM, PNDM, the
multistep DPM-Solver/UniPC/DEIS ones, the Euler/Heun ones built from such a config); sampler
settings of the scheduler (timestep spacing, clip_sample, thresholding) play no part.
"""

from __future__ import annotations

import torch

from ..models.parametrization import convert
from ..sdes.tabulated import TabulatedVPSDE

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def from_diffusers(unet, scheduler, class_labels=None):
    """(score_fn, sde) for a diffusers noise-prediction network and its scheduler (module docstring).

    class_labels: for a class-conditional model (`num_class_embeds` set), an int label for every
    sample or a (B,) tensor of labels, passed to the network as `class_labels`.
    The network runs in its own dtype; the score comes back in the dtype of x (so float64 sampler
    states work with a float32 network).
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not torch.is_tensor(abar):
        raise ValueError(f"scheduler {type(scheduler).__name__} is not supported: from_diffusers needs a "
                         f"discrete variance-preserving schedule (a scheduler with alphas_cumprod, such as "
                         f"DDPMScheduler, DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, "
                         f"UniPCMultistepScheduler or EulerDiscreteScheduler)")
    prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} of {type(scheduler).__name__} is not supported: "
                         f"use one of {', '.join(PREDICTION_TYPES)}")
    if not callable(unet):
        raise TypeError(f"unet must be a diffusers model such as UNet2DModel, got {type(unet).__name__}")
    num_classes = getattr(getattr(unet, "config", None), "num_class_embeds", None)
    if num_classes is not None and class_labels is None:
        raise ValueError(f"this {type(unet).__name__} is class-conditional ({num_classes} classes): pass "
                         f"class_labels (an int or a (batch,) tensor of labels)")
    if class_labels is not None and num_classes is None:
        raise ValueError(f"class_labels were given but this {type(unet).__name__} is not class-conditional "
                         f"(its config has no num_class_embeds)")
    sde = TabulatedVPSDE(abar)
    kind = PREDICTION_TYPES[prediction_type]
    model_dtype = next(unet.parameters()).dtype

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = (t * sde.N - 1).to(model_dtype)
        kwargs = {}
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=x.device)
            kwargs["class_labels"] = labels.expand(x.shape[0]) if labels.dim() == 0 else labels
        out = unet(x.to(model_dtype), timestep, **kwargs)
        pred = (out.sample if hasattr(out, "sample") else out).to(x.dtype)
        return convert(pred, kind, "score", x, sde.alpha(t), sde.sigma(t))

    return score_fn, sde
