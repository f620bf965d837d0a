"""SDEs defined by their perturbation kernel alone: x_t = alpha(t) x_0 + sigma(t) z.

For an SDE with affine drift f(t) x and state-independent diffusion g(t), the kernel's moments obey
d alpha/dt = f alpha  and  d sigma^2/dt = 2 f sigma^2 + g^2  (Sarkka & Solin eq. 5.50-5.51), so

    f(t)   = d log alpha(t) / dt,
    g(t)^2 = d sigma(t)^2 / dt - 2 f(t) sigma(t)^2.

A subclass gives `alpha(t)` and `sigma(t)`; `f` and `g2` default to autograd through them and may
be overridden with closed forms. The log-SNR lambda(t) = log(alpha / sigma) is strictly
decreasing, and `t_of_log_snr` inverts it (numerically, by bisection, unless overridden).
"""

from __future__ import annotations

import torch

from .._checks import check_data
from .base import SDE, batch_view


class KernelSDE(SDE):
    """Base class for SDEs with affine drift and state-independent diffusion, defined by alpha, sigma."""

    # -- what a subclass defines --------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Mean coefficient alpha(t) of the kernel, shape (B,)."""
        return torch.exp(self.log_alpha(t))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t); define this or `alpha`."""
        if type(self).alpha is KernelSDE.alpha:
            raise NotImplementedError(f"{type(self).__name__} must define alpha(t) or log_alpha(t)")
        return torch.log(self.alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation sigma(t) of the kernel, shape (B,)."""
        raise NotImplementedError(f"{type(self).__name__} must define sigma(t)")

    def f(self, t: torch.Tensor) -> torch.Tensor:
        """Drift coefficient f(t) = d log alpha / dt (autograd unless overridden)."""
        return _time_derivative(self.log_alpha, t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f sigma^2 (autograd unless overridden)."""
        dvar = _time_derivative(lambda s: self.sigma(s) ** 2, t)
        return dvar - 2 * self.f(t) * self.sigma(t) ** 2

    @property
    def prior_std(self) -> float:
        """std of the prior: sigma(T) (the kernel's std at T, alpha(T) x_0 being neglected)."""
        return float(self.sigma(torch.tensor([self.T], dtype=torch.float64)))

    # -- derived quantities ---------------------------------------------------------------------
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log alpha(t) - log sigma(t), strictly decreasing in t."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of log_snr on (0, T], by bisection in float64 (to ~1e-12 relative in t)."""
        lam64 = lam.to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.full_like(lam64, self.T)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam64  # log-SNR decreases: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return ((lo + hi) / 2).to(lam.dtype)

    # -- the SDE contract ------------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(t) x and diffusion g(t), after checking x and t."""
        return self.drift_diffusion(x, self.check_t(t, check_data("x", x)))

    def drift_diffusion(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(t) x and diffusion g(t) for t a (B,) tensor of times in (0, T], unchecked."""
        return batch_view(self.f(t), x) * x, torch.sqrt(self.g2(t))

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel mean alpha(t) x_0 and std sigma(t)."""
        t = self.check_t(t, check_data("x0", x0))
        return batch_view(self.alpha(t), x0) * x0, self.sigma(t)


def _time_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    """Elementwise d fn(t) / dt for a function acting independently on each entry of t.

    Works under torch.no_grad and torch.inference_mode too (samplers run there): autograd is
    switched back on locally and t is cloned out of inference mode, so g(t) is never silently 0.
    """
    with torch.inference_mode(False), torch.enable_grad():
        s = t.detach().clone().requires_grad_(True)
        out = fn(s)
        if not out.requires_grad:  # fn does not depend on t
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), s)
    return grad
