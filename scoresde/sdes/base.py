"""The SDE contract shared by every family, and its time-reversed views.

A forward SDE  dx = f(x, t) dt + g(t) dw  on t in [0, T]  (Song et al. 2021, eq. 5) has the
reverse-time SDE  dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar  (eq. 6) and the
probability-flow ODE  dx/dt = f(x, t) - g(t)^2 grad_x log p_t(x) / 2  (eq. 13), which share the
marginals p_t.
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_view(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (B,) so it broadcasts against x of shape (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


def check_positive_finite(name: str, value, allow_zero: bool = False) -> float:
    """Return value as a float, or raise ValueError naming it and what is allowed."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed: it must be finite and {allowed}")
    return v


def check_steps(name: str, value) -> int:
    """Return value as an int >= 1, or raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} is not allowed: it must be an integer >= 1")
    return value


class SDE(abc.ABC):
    """A forward SDE with a Gaussian perturbation kernel p_0t(x_t | x_0).

    Subclasses define the drift and diffusion, the kernel's mean and std, and the prior.
    `N` is the number of steps of the discrete chain that `discretize` reproduces.
    """

    def __init__(self, N: int = 1000, T: float = 1.0):
        self.N = check_steps("N", N)
        self.T = check_positive_finite("T", T)

    # -- the contract ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) shaped like x, and diffusion g(t) of shape (B,)."""

    @abc.abstractmethod
    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean shaped like x0 and std of shape (B,) of the kernel p_0t(x_t | x_0)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T = N(0, prior_std^2 I)."""

    def prior_sampling(self, shape, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (batch first)."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension: shape (B,)."""
        d = z[0].numel()
        s2 = self.prior_std ** 2
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s2) - sq / (2 * s2)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the discrete chain x_{i+1} = x_i + f_i + G_i z with dt = T / N.

        The default is the Euler-Maruyama step f_i = f(x, t) dt, G_i = g(t) sqrt(dt); VP and VE
        override it with the exact DDPM and SMLD chains.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    # -- helpers ------------------------------------------------------------------------------
    def check_t(self, t: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Validate per-sample times t in (0, T] (NaN rejected); a scalar or 0-d t is broadcast to
        x's batch and t is cast to x's dtype and device, so every output has x's dtype."""
        if not torch.is_tensor(t):
            t = torch.as_tensor(t, dtype=x.dtype if x is not None else torch.get_default_dtype(),
                                device=x.device if x is not None else None)
        if t.dim() == 0 and x is not None:
            t = t.expand(x.shape[0])
        if t.dim() != 1:
            raise ValueError(f"t must be a 1-D tensor of per-sample times, got shape {tuple(t.shape)}")
        if x is not None and t.shape[0] != x.shape[0]:
            raise ValueError(f"t has {t.shape[0]} times but x has batch size {x.shape[0]}")
        if x is not None:  # results follow x's dtype and device, whatever t came in as
            t = t.to(dtype=x.dtype, device=x.device)
        elif not torch.is_floating_point(t):
            t = t.to(torch.get_default_dtype())
        bad = ~((t > 0) & (t <= self.T * (1 + 1e-6)))
        if bool(bad.any()):
            raise ValueError(f"t={t[bad][0].item()!r} is outside the allowed range (0, T={self.T}]")
        return t

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False,
                event_shape: tuple[int, ...] | None = None) -> "ReverseSDE":
        """The reverse-time SDE (eq. 6), or the probability-flow ODE (eq. 13) when probability_flow.

        `event_shape` (e.g. (C, H, W)) is only needed for the torchsde view of non-flat data, whose
        states torchsde keeps flattened to (B, D).
        """
        return ReverseSDE(self, score_fn, probability_flow, event_shape)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class ReverseSDE:
    """Time reversal of a forward SDE given a score function.

    Three views of the same object:
      * `sde(x, t)` / `discretize(x, t)`: reverse drift f - c g^2 s and diffusion in forward time t,
        to be stepped with negative dt (c = 1, or 1/2 for the probability flow);
      * torchsde: `f(s, y)` and `g_prod(s, y, v)` in the increasing time s = T - t on flattened
        states y of shape (B, D) with additive noise; dy/ds = -(f - g^2 score)(T - s), diffusion
        g(T - s). Pass the Brownian motion yourself, with `dt` (without it a BrownianInterval query
        costs so much that a 8000x2 srk solve did not finish in 120 s, vs 0.2 s with it):
        `torchsde.BrownianInterval(0, T - eps, size=(B, D), dt=dt, levy_area_approximation=
        "space-time")` serves euler, milstein and srk (srk needs the Levy area);
      * torchdiffeq: calling it as `rsde(t, x)` returns dx/dt = f - c g^2 s at forward time t; with
        probability_flow=True this is the probability-flow ODE, integrable from T down to eps.
        Adaptive solvers may step past the requested end time (see `__call__`); to make the last
        step end exactly at eps anyway, pass `options={"step_t": ts[1:]}`.
    """

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False,
                 event_shape: tuple[int, ...] | None = None):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.event_shape = event_shape
        self.T = forward.T
        self.N = forward.N
        self._c = 0.5 if probability_flow else 1.0

    def _times(self, t, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return t

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift f - c g^2 score and diffusion (0 for the probability flow), forward time t."""
        t = self._times(t, x)
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_view(diffusion ** 2, x) * score * self._c
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse of the forward chain: rev_f = f_i - c G_i^2 score, rev_G = G_i (Song et al. eq. 46)."""
        t = self._times(t, x)
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_view(G ** 2, x) * self.score_fn(x, t) * self._c
        return rev_f, torch.zeros_like(G) if self.probability_flow else G

    # torchdiffeq view ------------------------------------------------------------------------
    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dx/dt at forward time t. Adaptive torchdiffeq solvers step past the last requested time and
        interpolate back (dopri5 from T to eps = 1e-3 evaluated at t = -0.06). So the field is
        continued outside (0, T]: by its value at T above T, and by its value at 1e-6 T for t <= 0
        (not at t -> 0+, where a kernel-only sigma(t) rounds to 0 and g^2 by autograd is NaN).
        Times inside (0, T] are used as given, and requested outputs stay accurate interpolants."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp(max=self.T)
        t = torch.where(t > 0, t, torch.full_like(t, 1e-6 * self.T))
        return self.sde(x, t)[0]

    # torchsde view (s = T - t, flattened states) -----------------------------------------------
    def _unflatten(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.event_shape is None else y.reshape(y.shape[0], *self.event_shape)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self._unflatten(y)
        drift, _ = self.sde(x, self._times(self.T - s, x))
        return -drift.reshape(y.shape)

    def g_prod(self, s: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.probability_flow:
            return torch.zeros_like(y)
        t = self._times(self.T - s, y)
        _, diffusion = self.forward.sde(self._unflatten(y), t)
        return batch_view(diffusion, y) * v
