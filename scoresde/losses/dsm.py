"""Denoising score matching: the continuous-time loss and the discrete DDPM and SMLD losses.

Continuous time (Song et al. 2021, eq. 7), x_t = alpha(t) x_0 + sigma(t) eps:

    L(theta) = E_{t ~ U[eps, T]} E_{x_0, eps} [ lambda(t) || s_theta(x_t, t) + eps / sigma(t) ||^2 ],

summed over dimensions (as score_sde's default), averaged over the batch. Because
s + eps/sigma = -(eps_hat - eps)/sigma = (alpha / sigma^2)(x0_hat - x0) (Tweedie), the same number is

    lambda/sigma^2 ||eps_hat - eps||^2 = lambda alpha^2/sigma^4 ||x0_hat - x0||^2 = lambda ||s_hat - s||^2,

and it is computed in the model's own parametrization (`noised.NoisedBatch`), so no conversion
amplifies rounding errors. With lambda = g^2 the loss times (T - eps)/2 is the score-matching term
of the NLL bound (Song, Durkan et al. 2021, Thm. 1).

Discrete chains (`ddpm_loss`, `smld_loss`): the N steps of sde.discretize, x_{i+1} = a_i x_i + G_i z
with a_i = 1 + f_i(x)/x, taken at the midpoints t_i = (i + 1/2) T / N (for VP these are DDPM's betas,
for VE SMLD's sigmas). The chain's marginal after k steps is x_k = alpha_k x_0 + sigma_k eps with
alpha_k = prod_{i<k} a_i and sigma_k^2 = a_{k-1}^2 sigma_{k-1}^2 + G_{k-1}^2. The model sees x_k at the
continuous time with the same log-SNR, t_k = t_of_log_snr(log(alpha_k / sigma_k)), rescaled to that
time's kernel: alpha(t_k) / alpha_k * x_k = alpha(t_k) x_0 + sigma(t_k) eps exactly.

Each is a `SplitLoss`: its body draws the step's t, noise and dropped labels and returns the
`NoisedBatch` whose per_sample runs the network on some rows (split.py says why).
"""

from __future__ import annotations

import torch

from .noised import NoisedBatch, noised_batch
from .split import SplitLoss
from .weighting import check_t_sampling, check_weighting, loss_weight, sample_t


def _check_data(x0: torch.Tensor) -> None:
    if not torch.is_tensor(x0) or not torch.is_floating_point(x0) or x0.dim() < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a floating tensor of shape (batch, ...) with batch >= 1, "
                         f"got {getattr(x0, 'dtype', type(x0))} {tuple(getattr(x0, 'shape', ()))}")


def drop_labels(y: torch.Tensor | None, p_uncond: float, num_classes: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Replace each label by the null label num_classes with probability p_uncond (Ho & Salimans 2021)."""
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond={p_uncond!r} is not allowed: it must be a probability in [0, 1]")
    if p_uncond == 0.0:
        return y
    if y is None or num_classes is None:
        raise ValueError(f"p_uncond={p_uncond} needs class labels y and a network built with num_classes "
                         "(label dropout trains the unconditional model for classifier-free guidance)")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, num_classes), y)


@SplitLoss
def dsm_loss(model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *, weighting: str = "sigma2",
             t_sampling: str | None = None, eps: float = 1e-5, p_uncond: float = 0.0,
             generator: torch.Generator | None = None) -> NoisedBatch:
    """Weighted denoising score matching over continuous t (module docstring); per-sample if not reduce.

    weighting in WEIGHTINGS; t_sampling in T_SAMPLINGS, by default "importance" for the likelihood
    weighting (its variance is otherwise dominated by t near 0) and "uniform" for the others.
    """
    check_weighting(weighting)
    t_sampling = check_t_sampling(t_sampling or ("importance" if weighting == "likelihood" else "uniform"))
    _check_data(x0)
    y = drop_labels(y, p_uncond, model.num_classes, generator)
    t, q = sample_t(sde, x0.shape[0], t_sampling, eps, generator=generator, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    weight = loss_weight(weighting, sde, t) / sigma ** 2 * q
    return noised_batch(model, x0, noise, alpha, sigma, t, y, weight)


def chain_marginals(sde, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_k, sigma_k), k = 1 .. N, of the discrete chain of sde.discretize (module docstring)."""
    t = (torch.arange(sde.N, dtype=torch.float64, device=device) + 0.5) * (sde.T / sde.N)
    ones = torch.ones(sde.N, 1, dtype=torch.float64, device=device)
    f, G = sde.discretize(ones, t)
    alpha = torch.cumprod(1.0 + f[:, 0], 0)
    # dividing the variance recursion by alpha_k^2: sigma_k^2 / alpha_k^2 = sum_{i<k} G_i^2 / alpha_{i+1}^2
    sigma = alpha * torch.cumsum(G ** 2 / alpha ** 2, 0).sqrt()
    return alpha.to(dtype), sigma.to(dtype)


def _chain_loss(model, sde, x0, y, p_uncond, generator, factor) -> NoisedBatch:
    _check_data(x0)
    y = drop_labels(y, p_uncond, model.num_classes, generator)
    alpha_k, sigma_k = chain_marginals(sde, torch.float64, x0.device)
    k = torch.randint(0, sde.N, (x0.shape[0],), generator=generator, device=x0.device)
    lam = torch.log(alpha_k[k] / sigma_k[k])
    t = sde.t_of_log_snr(lam).clamp(min=torch.finfo(x0.dtype).tiny, max=sde.T).to(x0.dtype)
    alpha, sigma = sde.alpha(t), sde.sigma(t)  # the continuous kernel with the chain's SNR
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    weight = torch.full_like(t, factor)  # lambda = sigma^2: lambda / sigma^2 = 1
    return noised_batch(model, x0, noise, alpha, sigma, t, y, weight)


@SplitLoss
def ddpm_loss(model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *, p_uncond: float = 0.0,
              generator: torch.Generator | None = None) -> NoisedBatch:
    """DDPM's L_simple = E_k ||eps - eps_theta(x_k, k)||^2, k uniform over the chain's N steps (Ho et al. eq. 14)."""
    return _chain_loss(model, sde, x0, y, p_uncond, generator, 1.0)


@SplitLoss
def smld_loss(model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *, p_uncond: float = 0.0,
              generator: torch.Generator | None = None) -> NoisedBatch:
    """NCSN's loss (1/2) E_k sigma_k^2 ||s_theta(x_k, sigma_k) + eps/sigma_k||^2, k uniform over the N
    noise levels of the chain (Song & Ermon 2019, eq. 6 with lambda = sigma^2; for VE: SMLD's sigmas)."""
    return _chain_loss(model, sde, x0, y, p_uncond, generator, 0.5)
