"""A learned noise schedule: VDM's monotone gamma network as a kernel-only SDE (Kingma et al. 2021).

The schedule is a variance-preserving kernel parametrized by gamma_eta(t) = -log SNR(t), with
SNR = alpha^2 / sigma^2 (the seed's section 2.2, SNR(t) = exp(-omega_eta(t))):

    alpha(t)^2 = sigmoid(-gamma(t)),   sigma(t)^2 = sigmoid(gamma(t)),   alpha^2 + sigma^2 = 1,

so in this package's convention lambda(t) = log(alpha / sigma) = -gamma(t) / 2. From KernelSDE,
f = d log alpha / dt = -gamma'(t) sigma^2 / 2 and g^2 = d sigma^2/dt - 2 f sigma^2 = gamma'(t) sigma^2
(a VP SDE with beta(t) = gamma'(t) sigma(t)^2).

gamma is monotone by construction (VDM App. H, "NoiseSchedule_NNet"): with softplus-positive
weights w1, w2 (F,), w3 (F,),

    gamma~(t) = w1 t + (1/F) sum_j w3_j sigmoid(w2_j (2t - 1) + b_j)     (strictly increasing),
    gamma(t)  = gamma_min + (gamma_max - gamma_min) (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0)),

with trainable endpoints gamma_min and gamma_max = gamma_min + softplus(.) > gamma_min.
gamma'(t) is in closed form (differentiable in eta, so a loss weighted by gamma'(t) trains the
network), d gamma~/dt = w1 + (1/F) sum_j w3_j 2 w2_j h_j (1 - h_j), h_j the sigmoid above. The prior is N(0, I), as for every VP schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_count, check_real
from .kernel import KernelSDE

MAX_FEATURES = 2 ** 16
GAMMA_LIMIT = 50.0  # |gamma| = |log SNR| bound: sigmoid(-50)^(1/2) ~ 1e-11 is still normal in float32


class MonotoneGamma(nn.Module):
    """gamma(t) on [0, 1]: strictly increasing from gamma_min to gamma_max (module docstring)."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, n_features: int = 1024):
        super().__init__()
        gamma_min, gamma_max = check_real("gamma_min", gamma_min), check_real("gamma_max", gamma_max)
        if not (-GAMMA_LIMIT <= gamma_min < gamma_max <= GAMMA_LIMIT):
            raise ValueError(f"gamma_min={gamma_min!r}, gamma_max={gamma_max!r} are not allowed: they must "
                             f"satisfy -{GAMMA_LIMIT:g} <= gamma_min < gamma_max <= {GAMMA_LIMIT:g} "
                             f"(alpha^2 = sigmoid(-gamma) and sigma^2 stay normal in float32)")
        if check_count("n_features", n_features) > MAX_FEATURES:
            raise ValueError(f"n_features={n_features} is not allowed: it must be <= {MAX_FEATURES} "
                             f"(VDM uses 1024; each feature costs B floats per evaluation)")
        self.gamma_min = nn.Parameter(torch.tensor(gamma_min))
        self._gap = nn.Parameter(torch.tensor(_softplus_inverse(gamma_max - gamma_min)))
        # raw weights of the positive layers; w1 dominates at start, so gamma starts near linear
        self._w1 = nn.Parameter(torch.tensor(_softplus_inverse(1.0)))
        self._w2 = nn.Parameter(torch.randn(n_features))
        self._b2 = nn.Parameter(torch.randn(n_features))
        self._w3 = nn.Parameter(torch.randn(n_features))

    @property
    def gamma_max(self) -> torch.Tensor:
        return self.gamma_min + F.softplus(self._gap)

    def _unnormalized(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma~(t) and d gamma~/dt for t of shape (B,), in t's dtype."""
        w1, w2, w3 = (F.softplus(p.to(t.dtype)) for p in (self._w1, self._w2, self._w3))
        b2 = self._b2.to(t.dtype)
        h = torch.sigmoid((2 * t[:, None] - 1) * w2 + b2)  # (B, F)
        value = w1 * t + (h * w3).mean(1)
        slope = w1 + (h * (1 - h) * 2 * w2 * w3).mean(1)
        return value, slope

    def value_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma(t) and gamma'(t) in closed form; the network runs once per distinct time when t
        needs no gradient (a sampler's batch shares one t)."""
        if t.requires_grad:
            return self._normalized(t)
        u, inverse = torch.unique(t, return_inverse=True)
        g, dg = self._normalized(u)
        return g[inverse], dg[inverse]

    def _normalized(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ends, _ = self._unnormalized(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        value, slope = self._unnormalized(t)
        g0 = self.gamma_min.to(t.dtype)
        scale = (self.gamma_max.to(t.dtype) - g0) / (ends[1] - ends[0])
        return g0 + scale * (value - ends[0]), scale * slope

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.value_and_derivative(t)[0]


class LearnedSDE(KernelSDE, nn.Module):
    """VP SDE with a learned schedule gamma_eta(t) on T = 1. Prior N(0, I).

    An nn.Module: its parameters (the gamma network and endpoints) train with the score network.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, n_features: int = 1024,
                 N: int = 1000):
        nn.Module.__init__(self)
        KernelSDE.__init__(self, N=N, T=1.0)
        self.gamma = MonotoneGamma(gamma_min, gamma_max, n_features)

    def gamma_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma(t) and gamma'(t), differentiable in eta (the network's parameters)."""
        return self.gamma.value_and_derivative(t)

    def log_alpha(self, t):
        return 0.5 * F.logsigmoid(-self.gamma(t))

    def alpha(self, t):
        return torch.sqrt(torch.sigmoid(-self.gamma(t)))

    def sigma(self, t):
        return torch.sqrt(torch.sigmoid(self.gamma(t)))

    def log_snr(self, t):
        return -0.5 * self.gamma(t)

    def f(self, t):
        g, dg = self.gamma_and_derivative(t)
        return -0.5 * dg * torch.sigmoid(g)

    def g2(self, t):
        g, dg = self.gamma_and_derivative(t)
        return dg * torch.sigmoid(g)

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        with torch.no_grad():
            lo, hi = float(self.gamma.gamma_min), float(self.gamma.gamma_max)
        return f"LearnedSDE(gamma_min={lo:.4g}, gamma_max={hi:.4g}, N={self.N})"


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = y > 0."""
    return y + math.log(-math.expm1(-y))
