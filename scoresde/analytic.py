"""Exact perturbed densities and scores of Gaussian-mixture data: the ground truth for tests and benchmarks.

Data p_0(x) = sum_k w_k N(x; mu_k, s_k^2 I) pushed through any kernel x_t = alpha(t) x_0 + sigma(t) z
stays a mixture:  p_t(x) = sum_k w_k N(x; alpha mu_k, v_k(t) I),  v_k(t) = alpha^2 s_k^2 + sigma^2,
with score  grad log p_t(x) = sum_k r_k(x) (alpha mu_k - x) / v_k,  r_k = p(k | x_t) the responsibilities.

Under a linear Gaussian measurement y = A x_0 + n, n ~ N(0, s^2 I), the posterior p(x_0 | y) is again a
mixture (`GaussianMixture.posterior`, `MixturePosterior`): the exact target for inverse-problem solvers.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_count, check_generator
from .sdes.base import batch_view


def _real(name: str, value, dtype) -> torch.Tensor:
    """value (numbers, nested lists, an array or a real tensor) as a tensor of dtype, or TypeError."""
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, bool) or (
            torch.is_tensor(value) and (value.is_complex() or value.dtype == torch.bool)):
        raise TypeError(f"{name} must be real numbers (a number, list, array or tensor), got {value!r}")
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be real numbers (a number, list, array or tensor): {err}") from None


class GaussianMixture:
    """An isotropic Gaussian mixture in D dimensions: means (K, D), stds (K,), weights (K,)."""

    def __init__(self, means, stds, weights=None, dtype=torch.float64):
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype={dtype!r} is not allowed: use torch.float32 or torch.float64")
        self.means = _real("means", means, dtype)
        if self.means.dim() != 2 or self.means.shape[0] == 0 or self.means.shape[1] == 0:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(self.means.shape)}")
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError(f"means must be finite, got {self.means.tolist()}")
        K = self.means.shape[0]
        stds = _real("stds", stds, dtype)
        if stds.dim() > 1 or stds.numel() not in (1, K):
            raise ValueError(f"stds must be one number or K={K} numbers, got shape {tuple(stds.shape)}")
        self.stds = stds.expand(K).clone()
        if not bool(((self.stds > 0) & torch.isfinite(self.stds)).all()):
            raise ValueError(f"stds must be finite and > 0, got {self.stds.tolist()}")
        w = torch.full((K,), 1.0 / K, dtype=dtype) if weights is None else _real("weights", weights, dtype)
        if w.shape != (K,) or not bool(((w > 0) & torch.isfinite(w)).all()):
            raise ValueError(f"weights must be K={K} finite positive numbers, got {w.tolist()}")
        self.weights = w / w.sum()

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 4.0, std: float = 0.5, dim: int = 2, dtype=torch.float64):
        """n_modes equal-weight components on a circle in the first two coordinates of R^dim."""
        ang = torch.arange(n_modes, dtype=dtype) * (2 * math.pi / n_modes)
        means = torch.zeros(n_modes, dim, dtype=dtype)
        means[:, 0], means[:, 1] = radius * torch.cos(ang), radius * torch.sin(ang)
        return cls(means, std, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws and their component labels."""
        n = check_count("n", n)
        check_generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=self.means.dtype, generator=generator)
        return self.means[k] + self.stds[k, None] * z, k

    def posterior(self, A, y, noise_std: float) -> "MixturePosterior":
        """The exact posterior p(x_0 | y) of this prior under y = A x_0 + n, n ~ N(0, noise_std^2 I).

        A: (M, D) with full row rank, y: (M,). noise_std = 0 is exact conditioning on A x_0 = y (for a
        row-selecting A, exact inpainting). See `MixturePosterior`.
        """
        A = _real("A", A, self.means.dtype)
        y = _real("y", y, self.means.dtype)
        if A.dim() != 2 or A.shape[1] != self.dim or A.shape[0] == 0:
            raise ValueError(f"A must have shape (M, D={self.dim}) with M >= 1, got {tuple(A.shape)}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have shape (M={A.shape[0]},) to match A of shape {tuple(A.shape)}, "
                             f"got {tuple(y.shape)}")
        if not bool(torch.isfinite(A).all() & torch.isfinite(y).all()):
            raise ValueError("A and y must be finite")
        noise_std = float(noise_std)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
        return MixturePosterior(self, A, y, noise_std)

    def _moments(self, sde, t: torch.Tensor):
        alpha, sigma = sde.alpha(t).to(self.means.dtype), sde.sigma(t).to(self.means.dtype)
        var = alpha[:, None] ** 2 * self.stds[None] ** 2 + sigma[:, None] ** 2  # (B, K)
        return alpha, var

    def component_log_prob(self, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
        """log w_k + log N(x; alpha mu_k, v_k I), shape (B, K)."""
        xf = x.flatten(1).to(self.means.dtype)
        alpha, var = self._moments(sde, t)
        # ||x - alpha mu_k||^2 = ||x||^2 - 2 alpha x.mu_k + alpha^2 ||mu_k||^2, as one matmul
        sq = (xf.pow(2).sum(1, keepdim=True) - 2 * alpha[:, None] * (xf @ self.means.T)
              + alpha[:, None] ** 2 * self.means.pow(2).sum(1)[None]).clamp_min(0)
        return torch.log(self.weights)[None] - 0.5 * (self.dim * torch.log(2 * math.pi * var) + sq / var)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
        """log p_t(x), shape (B,)."""
        return torch.logsumexp(self.component_log_prob(x, t, sde), dim=1).to(x.dtype)

    def log_posterior(self, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
        """log p(k | x_t), shape (B, K): the exact noise-aware classifier."""
        return torch.log_softmax(self.component_log_prob(x, t, sde), dim=1)

    def component_score(self, x: torch.Tensor, t: torch.Tensor, sde, k: int) -> torch.Tensor:
        """grad log N(x; alpha mu_k, v_k I) = (alpha mu_k - x) / v_k."""
        xf = x.flatten(1).to(self.means.dtype)
        alpha, var = self._moments(sde, t)
        s = (alpha[:, None] * self.means[k][None] - xf) / var[:, k:k + 1]
        return s.reshape(x.shape).to(x.dtype)

    def score(self, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k (alpha mu_k - x) / v_k."""
        xf = x.flatten(1).to(self.means.dtype)
        alpha, var = self._moments(sde, t)
        r_over_v = torch.softmax(self.component_log_prob(x, t, sde), dim=1) / var  # r_k / v_k, (B, K)
        s = alpha[:, None] * (r_over_v @ self.means) - r_over_v.sum(1, keepdim=True) * xf
        return s.reshape(x.shape).to(x.dtype)

    def score_fn(self, sde, component: int | None = None):
        """The plain sampler contract (x, t) -> score, for the mixture or one component."""
        if component is None:
            return lambda x, t: self.score(x, t, sde)
        return lambda x, t: self.component_score(x, t, sde, component)


class MixturePosterior:
    """p(x_0 | y) for the prior sum_k w_k N(m_k, s_k^2 I) and y = A x_0 + n, n ~ N(0, s^2 I): the mixture

        sum_k w'_k N(mu_k, C_k),   w'_k  ∝  w_k N(y; A m_k, G_k),   G_k = s_k^2 A A^T + s^2 I,
        mu_k = m_k + K_k (y - A m_k),   C_k = s_k^2 (I - K_k A),   K_k = s_k^2 A^T G_k^{-1},

    Bayes' rule for each component (the Kalman update; equal to C_k = (I / s_k^2 + A^T A / s^2)^{-1},
    mu_k = C_k (m_k / s_k^2 + A^T y / s^2) when s > 0, and valid at s = 0 where C_k is singular).
    `sample` draws exactly by Matheron's rule: x ~ N(m_k, s_k^2 I), n ~ N(0, s^2 I) give
    x + K_k (y - A x - n) ~ N(mu_k, C_k) (Doucet 2010; Wilson et al. 2020).
    """

    def __init__(self, prior: GaussianMixture, A: torch.Tensor, y: torch.Tensor, noise_std: float):
        self.prior, self.A, self.y, self.noise_std = prior, A, y, noise_std
        var = prior.stds ** 2  # (K,)
        eye_m = torch.eye(A.shape[0], dtype=A.dtype)
        gram = A @ A.T
        G = var[:, None, None] * gram + noise_std ** 2 * eye_m  # (K, M, M)
        try:
            L = torch.linalg.cholesky(G)
        except RuntimeError:
            raise ValueError("A A^T is singular and noise_std = 0: A must have full row rank "
                             "(no repeated or dependent measurements) for noise-free conditioning") from None
        resid = y[None] - prior.means @ A.T  # (K, M)
        white = torch.linalg.solve_triangular(L, resid[..., None], upper=False)[..., 0]
        log_lik = (-0.5 * white.pow(2).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                   - 0.5 * A.shape[0] * math.log(2 * math.pi))
        self.log_evidence = torch.logsumexp(torch.log(prior.weights) + log_lik, 0)  # log p(y)
        self.weights = torch.softmax(torch.log(prior.weights) + log_lik, 0)
        # K_k = s_k^2 A^T G_k^{-1}, (K, D, M)
        self.gains = var[:, None, None] * torch.cholesky_solve(A.expand(len(var), -1, -1), L).transpose(1, 2)
        self.means = prior.means + (self.gains @ resid[..., None])[..., 0]
        eye_d = torch.eye(prior.dim, dtype=A.dtype)
        self.covariances = var[:, None, None] * (eye_d - self.gains @ A)

    @property
    def dim(self) -> int:
        return self.prior.dim

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n exact draws and their component labels (Matheron's rule, see the class docstring)."""
        n = check_count("n", n)
        check_generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.prior.means[k] + self.prior.stds[k, None] * torch.randn(n, self.dim, dtype=self.A.dtype,
                                                                        generator=generator)
        noise = self.noise_std * torch.randn(n, self.A.shape[0], dtype=self.A.dtype, generator=generator)
        innovation = self.y[None] - x @ self.A.T - noise
        return x + (self.gains[k] @ innovation[..., None])[..., 0], k

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_0 = x | y), shape (B,); needs noise_std > 0 (at 0 the posterior lives on A x = y)."""
        if self.noise_std == 0:
            raise ValueError("log_prob needs noise_std > 0: with noise_std = 0 the posterior has no density "
                             "in R^D (it lives on the affine subspace A x = y)")
        xf = x.flatten(1).to(self.A.dtype)
        if xf.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} values per sample, got shape {tuple(x.shape)}")
        comp = torch.distributions.MultivariateNormal(self.means, covariance_matrix=self.covariances)
        return torch.logsumexp(torch.log(self.weights) + comp.log_prob(xf[:, None]), 1).to(x.dtype)


def gaussian_score_fn(sde, mean: float, std: float):
    """Exact score of N(mean, std^2 I) data under sde: (alpha m - x) / (alpha^2 s^2 + sigma^2)."""
    def score(x, t):
        alpha, sigma = batch_view(sde.alpha(t), x), batch_view(sde.sigma(t), x)
        return (alpha * mean - x) / (alpha ** 2 * std ** 2 + sigma ** 2)
    return score
