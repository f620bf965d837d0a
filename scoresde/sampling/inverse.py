"""Likelihood guidance for inverse problems: grad_x log p_t(y | x_t) for a `Measurement` y = A(x_0) + n.

p_t(y | x_t) = ∫ p(y | x_0) p(x_0 | x_t) dx_0 is intractable; both terms replace p(x_0 | x_t) by a
Gaussian around Tweedie's x0_hat(x_t) = (x_t + sigma_t^2 score) / alpha_t and differentiate through it
(one vector-Jacobian product of the score per evaluation):

* `DPS` (Chung et al. 2023, "Diffusion posterior sampling"): a point mass at x0_hat, so
  grad log p_t(y | x_t) ≈ -grad_x |y - A(x0_hat)|^2 / (2 s^2)   (step_rule="gaussian", needs s > 0), or
  Chung's normalized rule -zeta grad_x |y - A(x0_hat)|, i.e. the step zeta / |y - A(x0_hat)| on the
  squared residual (step_rule="normalized"; `scale` is zeta; a sampler moves x by its step size times it);
* `PosteriorCovarianceGuidance` (Song et al. 2023, PiGDM): p(x_0 | x_t) ≈ N(x0_hat, r_t^2 I) with
  r_t^2 = d^2 sigma_t^2 / (alpha_t^2 d^2 + sigma_t^2), the posterior variance for N(0, d^2 I) data, so
  y | x_t ≈ N(A x0_hat, s^2 I + r_t^2 A A^T) and grad log p_t(y | x_t) ≈ J^T A^T (s^2 I + r_t^2 A A^T)^{-1}
  (y - A x0_hat), J = d x0_hat / d x_t. Exact for Gaussian data of variance d^2 and linear A; works at s = 0.
  With covariance="jacobian" it uses the exact posterior covariance instead, Cov[x_0 | x_t] =
  (sigma_t^2 / alpha_t) J (the derivative of Tweedie's formula; Boys et al. 2023, TMPD), so
  y | x_t ≈ N(A x0_hat, s^2 I + (sigma_t^2 / alpha_t) A J A^T): M more vector-Jacobian products per
  evaluation for M measurements (meant for small M), exact for any Gaussian data and linear A; its
  `linearization` also returns H = A J and that covariance (twisted_smc's Gaussian proposal).

Both are `Guidance` terms: pass them as `sample(..., guidance=term)` to any sampler.
"""

from __future__ import annotations

import torch

from .._checks import check_callable, check_positive_finite
from ..sdes.base import batch_view
from .denoise import tweedie
from .guidance import Guidance
from .measurements import Measurement


class _TweedieLikelihood(Guidance):
    """Shared: x0_hat with its graph, the residual, and the VJP of a weighted residual through A and x0_hat."""

    def __init__(self, score_fn, sde, measurement: Measurement, scale: float):
        check_callable("score_fn", score_fn)
        if not hasattr(sde, "alpha") or not hasattr(sde, "sigma"):
            raise ValueError(f"likelihood guidance needs a kernel SDE with alpha(t) and sigma(t); "
                             f"got {type(sde).__name__}")
        if not isinstance(measurement, Measurement):
            raise TypeError(f"measurement must be a Measurement(operator, y, noise_std), got {measurement!r}")
        self.score_fn, self.sde, self.measurement = score_fn, sde, measurement
        self.scale = check_positive_finite("scale", scale, allow_zero=True)

    def _coefficients(self, t, x):
        t64 = t.to(torch.float64)
        return (batch_view(self.sde.alpha(t64).to(x.dtype), x), batch_view(self.sde.sigma(t64).to(x.dtype), x))

    def weighted_residual(self, residual, alpha, sigma, x0, xg):
        """(v, log det of the covariance per sample or 0 where it is the same for all samples) with
        grad log p_t(y | x_t) ≈ J^T A^T v (v may depend on the residual's value)."""
        raise NotImplementedError

    def log_likelihood_and_grad(self, x, t):
        """(log p~_t(y | x) up to a constant shared by all samples at t, its gradient J^T A^T v, x0_hat):
        log p~ = -<r, v> / 2 - log det(Cov) / 2 with r = y - A(x0_hat); all detached."""
        alpha, sigma = self._coefficients(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = tweedie(xg, self.score_fn(xg, t), alpha, sigma)
            residual = self.measurement.residual(x0)
            v, logdet = self.weighted_residual(residual.detach(), alpha, sigma, x0, xg)
            # d/dx <-(y - A(x0_hat(x))), v> = J^T A^T v; for nonlinear A, A^T is its Jacobian's transpose
            (grad,) = torch.autograd.grad(-(residual * v).sum(), xg)
        log_lik = -0.5 * (residual.detach() * v).flatten(1).sum(1) - 0.5 * logdet
        return log_lik, grad, x0.detach()

    def __call__(self, x, t, score):
        return self.scale * self.log_likelihood_and_grad(x, t)[1]


class DPS(_TweedieLikelihood):
    """Diffusion posterior sampling (Chung et al. 2023), see the module docstring."""

    def __init__(self, score_fn, sde, measurement: Measurement, scale: float = 1.0, step_rule: str = "gaussian"):
        super().__init__(score_fn, sde, measurement, scale)
        if step_rule not in ("gaussian", "normalized"):
            raise ValueError(f"step_rule={step_rule!r} is not allowed: use 'gaussian' or 'normalized'")
        if step_rule == "gaussian" and measurement.noise_std == 0:
            raise ValueError("DPS with step_rule='gaussian' divides by noise_std^2 and the measurement has "
                             "noise_std = 0: use step_rule='normalized' or PosteriorCovarianceGuidance")
        self.step_rule = step_rule

    def weighted_residual(self, residual, alpha, sigma, x0, xg):
        if self.step_rule == "gaussian":
            return residual / self.measurement.noise_std ** 2, 0.0
        norm = residual.flatten(1).norm(dim=1).clamp_min(torch.finfo(residual.dtype).tiny)
        return residual / batch_view(norm, residual), 0.0  # grad of -|r| = J^T A^T r / |r|

    def __repr__(self):
        return f"DPS({self.measurement!r}, scale={self.scale}, step_rule={self.step_rule!r})"


class PosteriorCovarianceGuidance(_TweedieLikelihood):
    """PiGDM-style guidance (Song et al. 2023) with data scale `data_std`, see the module docstring."""

    def __init__(self, score_fn, sde, measurement: Measurement, data_std: float = 1.0, scale: float = 1.0,
                 covariance: str = "isotropic"):
        super().__init__(score_fn, sde, measurement, scale)
        self.data_std = check_positive_finite("data_std", data_std)
        if covariance not in ("isotropic", "jacobian"):
            raise ValueError(f"covariance={covariance!r} is not allowed: use 'isotropic' or 'jacobian'")
        self.covariance = covariance

    def weighted_residual(self, residual, alpha, sigma, x0, xg):
        if self.covariance == "jacobian":
            return self._jacobian_weighted(residual, alpha, sigma, x0, xg)
        d2 = self.data_std ** 2
        r2 = (d2 * sigma ** 2 / (alpha ** 2 * d2 + sigma ** 2)).flatten()  # per sample, (B,)
        return self.measurement.solve_gram(residual, self.measurement.noise_std ** 2, r2), 0.0

    def _jacobian_weighted(self, residual, alpha, sigma, x0, xg):
        """(s^2 I + (sigma^2 / alpha) A J A^T)^{-1} r per sample and the log-determinant."""
        cov = self._jacobian_covariance(x0, xg, alpha, sigma)[1]
        r = residual.flatten(1)
        return torch.linalg.solve(cov, r[..., None])[..., 0].reshape(residual.shape), torch.linalg.slogdet(cov)[1]

    def _jacobian_covariance(self, x0, xg, alpha, sigma):
        """(rows of A J (B, M, *x), s^2 I + (sigma^2 / alpha) A J A^T (B, M, M)), A J by one VJP per
        measurement (J = d x0_hat / d x is symmetric: the Hessian of log p_t enters as I + sigma^2 H)."""
        ax = self.measurement.operator(x0).flatten(1)  # (B, M)
        rows = [torch.autograd.grad(ax[:, m].sum(), xg, retain_graph=True)[0] for m in range(ax.shape[1])]
        aj = torch.stack(rows, 1)  # (B, M, *x), row m = (A J)_m
        ajat = self.measurement.operator(aj.flatten(0, 1).reshape(-1, *xg.shape[1:])).reshape(
            ax.shape[0], ax.shape[1], ax.shape[1])  # (A J A^T), (B, M, M)
        scale = (sigma ** 2 / alpha).flatten()[:, None, None]  # per sample
        eye = torch.eye(ax.shape[1], dtype=ax.dtype, device=ax.device)
        return aj, self.measurement.noise_std ** 2 * eye + scale * 0.5 * (ajat + ajat.transpose(1, 2))

    def linearization(self, x, t):
        """The Jacobian twist and its linearization in x, for covariance="jacobian" only: (log p~_t(y | x),
        its gradient H^T C^{-1} r, x0_hat, r = y - A(x0_hat) (B, M), H = A J (B, M, D), C (B, M, M)), all
        detached, with log p~_t(y | x') ≈ log N(r - H (x' - x); 0, C) near x (`twisted_smc`'s Gaussian
        proposal). One VJP fewer than log_likelihood_and_grad: the gradient is H^T v, a sum of H's rows."""
        if self.covariance != "jacobian":
            raise ValueError(f"linearization needs covariance='jacobian' (it returns A J), got {self.covariance!r}")
        alpha, sigma = self._coefficients(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = tweedie(xg, self.score_fn(xg, t), alpha, sigma)
            residual = self.measurement.residual(x0).detach().flatten(1)
            rows, cov = self._jacobian_covariance(x0, xg, alpha, sigma)
        rows, cov = rows.flatten(2), cov.detach()
        v = torch.linalg.solve(cov, residual[..., None])[..., 0]
        log_lik = -0.5 * (residual * v).sum(1) - 0.5 * torch.linalg.slogdet(cov)[1]
        grad = (rows * v[..., None]).sum(1).reshape(x.shape)
        return log_lik, grad, x0.detach(), residual, rows, cov

    def __repr__(self):
        return (f"PosteriorCovarianceGuidance({self.measurement!r}, data_std={self.data_std}, "
                f"scale={self.scale}, covariance={self.covariance!r})")
