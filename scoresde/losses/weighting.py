"""Loss weightings lambda(t) and the distributions of the training times t.

Weightings of denoising score matching (Song et al. 2021, eq. 7), for any KernelSDE:
  * "sigma2":     lambda = sigma(t)^2 (Song et al.'s default; the loss becomes ||eps_hat - eps||^2);
  * "likelihood": lambda = g(t)^2 (Song, Durkan et al. 2021, Thm. 1: the loss then bounds the NLL);
  * "uniform":    lambda = 1 (plain denoising score matching, Vincent 2011).

Times t in [eps, T] come from u in [0, 1):
  * "uniform":    u_i ~ U[0, 1) independently;
  * "stratified": u_i ~ U[i/B, (i+1)/B), one draw per stratum of the batch;
  * "antithetic": u_i = frac(u_0 + i/B) with one shared u_0 (Kingma et al. 2021, VDM App. I.1);
  * "importance": t ~ p(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T]. Since
    d lambda_snr / dt = -g^2 / (2 sigma^2) for every kernel SDE (lambda_snr = log(alpha/sigma)),
    this is lambda_snr ~ U[lambda_snr(T), lambda_snr(eps)] mapped back by t_of_log_snr (closed form
    or bisection), with normaliser Z = 2 (lambda_snr(eps) - lambda_snr(T)).

`sample_t` returns t with the importance factor q(t) = 1 / ((T - eps) p(t)) (1 without importance
sampling), so that E_p[q(t) h(t)] = E_{U[eps, T]}[h(t)] and every scheme estimates the same loss.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("sigma2", "likelihood", "uniform")
T_SAMPLINGS = ("uniform", "stratified", "antithetic", "importance")


def check_weighting(name: str) -> str:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; allowed: {', '.join(WEIGHTINGS)}")
    return name


def check_t_sampling(name: str) -> str:
    if name not in T_SAMPLINGS:
        raise ValueError(f"unknown t_sampling {name!r}; allowed: {', '.join(T_SAMPLINGS)}")
    return name


def loss_weight(name: str, sde, t: torch.Tensor) -> torch.Tensor:
    """lambda(t) of the weighting `name`, shape (B,)."""
    check_weighting(name)
    if name == "sigma2":
        return sde.sigma(t) ** 2
    if name == "likelihood":
        return sde.g2(t)
    return torch.ones_like(t)


def _log_snr_range(sde, eps: float, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    ends = torch.tensor([eps, sde.T], dtype=torch.float64, device=device)
    lam = sde.log_snr(ends).to(dtype)
    return lam[0], lam[1]


def importance_density(sde, t: torch.Tensor, eps: float) -> torch.Tensor:
    """p(t) = g(t)^2 / (sigma(t)^2 Z) on [eps, T], Z = 2 (lambda(eps) - lambda(T)); 0 outside."""
    lam_eps, lam_T = _log_snr_range(sde, eps, t.dtype, t.device)
    p = sde.g2(t) / (sde.sigma(t) ** 2 * 2 * (lam_eps - lam_T))
    return torch.where((t >= eps) & (t <= sde.T), p, torch.zeros_like(p))


def check_eps(sde, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < sde.T:
        raise ValueError(f"eps={eps!r} is not allowed: the smallest training time must be in (0, T={sde.T})")
    return float(eps)


def sample_t(sde, batch: int, method: str = "uniform", eps: float = 1e-5, *,
             generator: torch.Generator | None = None, dtype=torch.float32, device=None):
    """Training times t (B,) in [eps, T] drawn by `method`, and their importance factors q(t) (B,)."""
    check_t_sampling(method)
    eps = check_eps(sde, eps)
    if method == "antithetic":
        u0 = torch.rand((), generator=generator, dtype=dtype, device=device)
        u = torch.frac(u0 + torch.arange(batch, dtype=dtype, device=device) / batch)
    else:
        u = torch.rand(batch, generator=generator, dtype=dtype, device=device)
        if method == "stratified":
            u = (torch.arange(batch, dtype=dtype, device=device) + u) / batch
    if method != "importance":
        return eps + (sde.T - eps) * u, torch.ones_like(u)
    lam_eps, lam_T = _log_snr_range(sde, eps, torch.float64, device)
    lam = lam_T + (lam_eps - lam_T) * u.to(torch.float64)
    t = sde.t_of_log_snr(lam).clamp(eps, sde.T).to(dtype)
    return t, 1.0 / ((sde.T - eps) * importance_density(sde, t, eps))
