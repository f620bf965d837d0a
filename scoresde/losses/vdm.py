"""The continuous-time variational bound of VDM (Kingma et al. 2021), in bits/dim.

For the kernel x_t = alpha_t x + sigma_t eps with gamma(t) = -log(alpha_t^2 / sigma_t^2) (a
`LearnedSDE`, or any VP kernel: gamma = -2 log_snr), the negative log-likelihood of continuous data
x is bounded by three terms (VDM eqs. 11 and 17, with the chain starting at t = eps):

    -log p(x) <= E_q[-log p(x | z_eps)]                     reconstruction
               + KL(q(z_T | x) || N(0, I))                  prior
               + (1/2) int_eps^T gamma'(t) E_eps ||eps - eps_hat(z_t, t)||^2 dt    diffusion.

The diffusion integral is estimated with one t per sample, antithetic over the batch
(t_i = eps + (T - eps) frac(u_0 + i/B), VDM App. I.1), so each t_i is still uniform.

Reconstruction: this package models *dequantized* data (x = lo + (hi - lo)(v + u)/levels, the same
data the score network trains on and `likelihood.bits_per_dim` evaluates), so the decoder is the
Gaussian p(x | z_eps) = N(x; z_eps / alpha_eps, e^{gamma(eps)} I) on continuous x, whose expected
negative log-density is exactly D/2 (log 2 pi + gamma(eps) + 1) (as z/alpha - x = e^{gamma/2} eps).
VDM's discrete decoder (a softmax over the levels) would bound log P(v) directly, but for a model
of the bin centres only; the dequantized bound is comparable term by term with the ODE likelihood:

    bits/dim = (bound - D log((hi - lo) / levels)) / (D log 2)   >=  -log2 P(v) / D   (Jensen).

With levels=None (continuous data) it is -log2 p(x) / D. As a `SplitLoss`, the step's draws and
the reconstruction and prior terms are computed once; the network's error is the `NoisedBatch`'s.
"""

from __future__ import annotations

import math

import torch

from ..data.quantized import log_det_jacobian
from .noised import NoisedBatch, noised_batch
from .split import SplitLoss
from .weighting import sample_t

VLB_T_SAMPLINGS = ("antithetic", "uniform", "stratified")


@SplitLoss
def vdm_loss(model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *, levels: int | None,
             data_range: tuple[float, float] = (-1.0, 1.0), eps: float = 1e-5,
             t_sampling: str | None = None, generator: torch.Generator | None = None) -> NoisedBatch:
    """The VDM bound on -log2 P(v) / D per sample (module docstring); its batch mean if reduce.

    model: a ScoreModel (any parametrization) on `sde`, a VP kernel SDE with gamma_and_derivative(t)
    (LearnedSDE). x0: dequantized data in `data_range`, quantized to `levels` levels (None for
    continuous data). t_sampling in VLB_T_SAMPLINGS (None: antithetic). Gradients reach both the
    network and the schedule's parameters. With reduce=False, use t_sampling="uniform" for per-sample
    estimates: antithetic and stratified t tie a sample's t to its place in the batch, so only the
    mean over a randomly ordered batch is unbiased (per-digit values of -4.4 .. 9.2 bits/dim instead of 0.4 .. 3.8 were
    measured with t stratified over the 360 test digits).
    """
    t_sampling = t_sampling or "antithetic"
    if t_sampling not in VLB_T_SAMPLINGS:
        raise ValueError(f"t_sampling={t_sampling!r} is not allowed: use one of {VLB_T_SAMPLINGS}")
    if not torch.is_tensor(x0) or not torch.is_floating_point(x0) or x0.dim() < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a floating tensor of shape (batch, ...), got "
                         f"{getattr(x0, 'dtype', type(x0))} {tuple(getattr(x0, 'shape', ()))}")
    if not hasattr(sde, "gamma_and_derivative"):
        raise ValueError(f"vdm_loss needs an SDE with a learned schedule gamma(t) (LearnedSDE), got "
                         f"{type(sde).__name__}")
    log_det = 0.0 if levels is None else log_det_jacobian(levels, x0[0].numel(), data_range)
    B, D = x0.shape[0], x0[0].numel()
    ones = x0.new_ones(B)

    # diffusion term: (1/2) (T - eps) gamma'(t) ||eps - eps_hat||^2 at t ~ U[eps, T]
    t, _ = sample_t(sde, B, t_sampling, eps, generator=generator, dtype=x0.dtype, device=x0.device)
    gamma_t, dgamma_t = sde.gamma_and_derivative(t)
    alpha, sigma = torch.sigmoid(-gamma_t).sqrt(), torch.sigmoid(gamma_t).sqrt()
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    diffusion_weight = 0.5 * (sde.T - eps) * dgamma_t

    # prior term: KL(N(alpha_T x, sigma_T^2 I) || N(0, I))
    gamma_T = sde.gamma(ones * sde.T)
    a2_T, s2_T = torch.sigmoid(-gamma_T), torch.sigmoid(gamma_T)
    prior = 0.5 * (D * (s2_T - 1 - torch.log(s2_T)) + a2_T * x0.flatten(1).pow(2).sum(1))

    # reconstruction term: E[-log N(x; z_eps / alpha_eps, e^{gamma(eps)} I)]
    recon = 0.5 * D * (math.log(2 * math.pi) + 1 + sde.gamma(ones * eps))

    bits = D * math.log(2.0)  # bpd = (recon + prior + diffusion - log_det) / bits
    return noised_batch(model, x0, noise, alpha, sigma, t, y, diffusion_weight / bits,
                        offset=(recon + prior - log_det) / bits)
