"""What the network predicts, and how every prediction becomes a score (seed section 2.3).

With the kernel x_t = alpha x_0 + sigma eps (eps ~ N(0, I)) the three equivalent targets are tied
by Tweedie's formula E[x_0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha (Efron 2011):

    score = -eps / sigma,        x0 = (x_t - sigma eps) / alpha = (x_t + sigma^2 score) / alpha,

and v-prediction (Salimans & Ho 2022), written for any kernel by normalising r = sqrt(alpha^2 + sigma^2),
a = alpha / r, s = sigma / r (a^2 + s^2 = 1; for VP r = 1 and this is their v = alpha eps - sigma x0):

    v = a eps - s x0,    x0 = a x_t / r - s v,    eps = s x_t / r + a v.

`ScoreModel` wraps a raw network net(x, c_noise, y) with the preconditioning of Karras et al. 2022
(EDM, Table 1), written in alpha/sigma so it holds for every KernelSDE:

    c_in(t) = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)   (unit-variance input, e.g. for VE sigma = 50),
    c_noise(t) = -lambda(t) / 4 = log(sigma / alpha) / 4  (EDM's ln(sigma)/4 in the VE-equivalent sigma).

The raw output F is scaled so that the network's own target has unit scale at every noise level:
  * score: score = F / sigma (score_sde's `scale_by_sigma`; F's target is -eps);
  * x0: EDM's denoiser D = c_skip x_t / alpha + c_out F in the VE-equivalent noise s = sigma / alpha,
    c_skip = sigma_data^2 / (s^2 + sigma_data^2), c_out = s sigma_data / sqrt(s^2 + sigma_data^2)
    (without the skip, a plain x0-net must learn the identity at small noise and trains poorly on VE);
  * eps and v: F itself (their targets already have unit variance).

`noise_label` other than "edm" reproduces score_sde's networks (Song et al. 2021), which see the
raw x_t (c_in = 1) and c_noise = 999 t ("999t", its VP / sub-VP DDPM++ models) or log sigma(t)
("log_sigma", its VE NCSN++ models, whose Fourier features embed log sigma).
"""

from __future__ import annotations

import torch
from torch import nn

from ..sdes.base import batch_view

PARAMETRIZATIONS = ("eps", "x0", "score", "v")
NOISE_LABELS = ("edm", "999t", "log_sigma")


def check_parametrization(name: str) -> str:
    if name not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {name!r}; allowed: {', '.join(PARAMETRIZATIONS)}")
    return name


def noise_conditioning(sde, t: torch.Tensor, sigma_data: float = 0.5):
    """(alpha, sigma, c_in, c_noise), each of shape (B,): the kernel at t and EDM's preconditioning."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    c_in = torch.rsqrt(alpha ** 2 * sigma_data ** 2 + sigma ** 2)
    c_noise = -sde.log_snr(t) / 4
    return alpha, sigma, c_in, c_noise


def convert(pred: torch.Tensor, src: str, dst: str, x: torch.Tensor, alpha: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
    """Turn a prediction in parametrization `src` into `dst`, given x_t and the kernel's (B,) alpha, sigma."""
    check_parametrization(src)
    check_parametrization(dst)
    if src == dst:
        return pred
    a, s = batch_view(alpha, x), batch_view(sigma, x)
    if src == "eps":
        eps, x0 = pred, (x - s * pred) / a
    elif src == "x0":
        eps, x0 = (x - a * pred) / s, pred
    elif src == "score":
        eps, x0 = -s * pred, (x + s ** 2 * pred) / a
    else:  # v
        r = torch.sqrt(a ** 2 + s ** 2)
        eps, x0 = (s * x / r + a * pred) / r, (a * x / r - s * pred) / r
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "score":
        return -eps / s
    r = torch.sqrt(a ** 2 + s ** 2)
    return (a * eps - s * x0) / r


def target(parametrization: str, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
           sigma: torch.Tensor) -> torch.Tensor:
    """The exact value of the prediction for x_t = alpha x0 + sigma noise (the regression target)."""
    check_parametrization(parametrization)
    if parametrization == "eps":
        return noise
    if parametrization == "x0":
        return x0
    a, s = batch_view(alpha, x0), batch_view(sigma, x0)
    if parametrization == "score":
        return -noise / s
    return (a * noise - s * x0) / torch.sqrt(a ** 2 + s ** 2)


def eps_error_scale(parametrization: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """c(t) with ||eps_hat - eps|| = c ||pred - target||: 1 (eps), alpha/sigma (x0), sigma (score), a (v)."""
    check_parametrization(parametrization)
    if parametrization == "eps":
        return torch.ones_like(alpha)
    if parametrization == "x0":
        return alpha / sigma
    if parametrization == "score":
        return sigma
    return alpha / torch.sqrt(alpha ** 2 + sigma ** 2)


class ScoreModel(nn.Module):
    """A raw network with its SDE, preconditioning and parametrization: x_t, t -> eps / x0 / score / v.

    `forward(x, t, y)` returns the prediction in the model's own parametrization; `eps`, `x0`,
    `score`, `v` convert it; `score_fn(y)` is the plain (x, t) -> score callable every sampler takes.
    Labels y follow the network's convention (label num_classes = unconditional); an int y is
    broadcast to the batch.
    """

    def __init__(self, net: nn.Module, sde, parametrization: str = "eps", sigma_data: float = 0.5,
                 noise_label: str = "edm"):
        super().__init__()
        if noise_label not in NOISE_LABELS:
            raise ValueError(f"noise_label={noise_label!r} is not allowed; allowed: {', '.join(NOISE_LABELS)}")
        self.noise_label = noise_label
        self.net = net
        self.sde = sde
        self.parametrization = check_parametrization(parametrization)
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data={sigma_data!r} is not allowed: it must be a number > 0")
        self.sigma_data = float(sigma_data)
        for name in ("alpha", "sigma", "log_snr"):
            if not callable(getattr(sde, name, None)):
                raise ValueError(f"ScoreModel needs an SDE with a Gaussian kernel (alpha, sigma, log_snr); "
                                 f"{type(sde).__name__} has no {name}()")

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a class-conditional network (label num_classes is the null label)."""
        return getattr(self.net, "num_classes", None)

    def _inputs(self, x: torch.Tensor, t, y):
        if not torch.is_tensor(x) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (batch, ...), got {getattr(x, 'shape', x)!r}")
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) (one time per sample), got {tuple(t.shape)}")
        if isinstance(y, int):
            y = torch.full((x.shape[0],), y, dtype=torch.long, device=x.device)
        return t, y

    def _predict(self, x: torch.Tensor, t, y):
        t, y = self._inputs(x, t, y)
        alpha, sigma, c_in, c_noise = noise_conditioning(self.sde, t, self.sigma_data)
        if self.noise_label == "edm":
            out = self.net(batch_view(c_in, x) * x, c_noise, y)
        else:
            out = self.net(x, 999 * t if self.noise_label == "999t" else torch.log(sigma), y)
        if out.shape != x.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.parametrization == "score":
            out = out / batch_view(sigma, x)
        elif self.parametrization == "x0":
            s2, sd2 = (sigma / alpha) ** 2, self.sigma_data ** 2
            c_skip, c_out = sd2 / (s2 + sd2), torch.sqrt(s2 * sd2 / (s2 + sd2))
            out = batch_view(c_skip / alpha, x) * x + batch_view(c_out, x) * out
        return out, alpha, sigma

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction in this model's parametrization."""
        return self._predict(x, t, y)[0]

    def predict(self, x: torch.Tensor, t: torch.Tensor, kind: str, y: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction converted to `kind` in PARAMETRIZATIONS."""
        check_parametrization(kind)
        out, alpha, sigma = self._predict(x, t, y)
        return convert(out, self.parametrization, kind, x, alpha, sigma)

    def eps(self, x, t, y=None):
        return self.predict(x, t, "eps", y)

    def x0(self, x, t, y=None):
        """The denoiser D(x_t, t) = E[x_0 | x_t] (Tweedie)."""
        return self.predict(x, t, "x0", y)

    def score(self, x, t, y=None):
        return self.predict(x, t, "score", y)

    def v(self, x, t, y=None):
        return self.predict(x, t, "v", y)

    def score_fn(self, y=None):
        """A plain callable (x, t) -> score for samplers and the likelihood; y fixed (None = unconditional)."""

        def score_fn(x, t):
            return self.score(x, t, y)

        return score_fn
