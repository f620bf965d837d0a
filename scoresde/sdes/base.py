"""The SDE contract shared by every family, and its time-reversed views.

A forward SDE  dx = f(x, t) dt + g(t) dw  on t in [0, T]  (Song et al. 2021, eq. 5) has the
reverse-time SDE  dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar  (eq. 6) and the
probability-flow ODE  dx/dt = f(x, t) - g(t)^2 grad_x log p_t(x) / 2  (eq. 13), which share the
marginals p_t.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Callable

import torch

from .._checks import MIN_EPS, check_count, check_data, check_generator, check_positive_finite, check_shape

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_view(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (B,) so it broadcasts against x of shape (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


class SDE(abc.ABC):
    """A forward SDE with a Gaussian perturbation kernel p_0t(x_t | x_0).

    Subclasses define the drift and diffusion, the kernel's mean and std, and the prior.
    `N` is the number of steps of the discrete chain that `discretize` reproduces.
    """

    def __init__(self, N: int = 1000, T: float = 1.0):
        self.N = check_count("N", N)
        self.T = check_positive_finite("T", T)
        if self.T < 100 * MIN_EPS:
            raise ValueError(f"T={T!r} is not allowed: it must be >= {100 * MIN_EPS:g}, so that the times "
                             f"eps in [{MIN_EPS:g}, T) of sampling and likelihood stay resolvable in float32")

    # -- the contract ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) shaped like x, and diffusion g(t) of shape (B,)."""

    def drift_diffusion(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`sde(x, t)` without checking its input, for callers whose times are valid by construction
        (the solvers' inner loops, through ReverseSDE): t a (B,) tensor of times in (0, T] in x's
        dtype. The check of t synchronises with the device, once per call. Defaults to `sde`."""
        return self.sde(x, t)

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
        shape = check_shape("shape", shape)
        check_generator(generator)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension: shape (B,)."""
        check_data("z", z)
        if z.dim() < 2:
            raise ValueError(f"z must have shape (batch, ...), got {tuple(z.shape)}")
        finite = torch.isfinite(z.flatten(1)).all(1)
        if not bool(finite.all()):
            raise ValueError(f"z has NaN or infinite entries in samples {(~finite).nonzero().flatten().tolist()[:10]}")
        d = z[0].numel()
        s2 = self.prior_std ** 2
        sq = z.flatten(1).double().pow(2).sum(1)  # |z|^2 overflows float32 from |z| ~ 1e19 on
        logp = (-0.5 * d * math.log(2 * math.pi * s2) - sq / (2 * s2)).to(z.dtype)
        if not bool(torch.isfinite(logp).all()):
            bad = (~torch.isfinite(logp)).nonzero().flatten().tolist()
            raise ValueError(f"log p_T(z) is below the range of {z.dtype} for samples {bad[:10]} (|z| up to "
                             f"{float(z.abs().max()):.3g} under a prior of std {self.prior_std:g}); pass float64 data")
        return logp

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
        if x is not None:
            check_data("x", x)
        if not torch.is_tensor(t):
            if isinstance(t, (list, tuple)) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in t):
                pass
            elif isinstance(t, bool) or not isinstance(t, numbers.Real):
                raise TypeError(f"t must be a tensor of per-sample times or a real number, got {t!r}")
            t = torch.as_tensor(t, dtype=x.dtype if x is not None else torch.get_default_dtype(),
                                device=x.device if x is not None else None)
        elif not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor of times in (0, T], got dtype {t.dtype}")
        elif t.device.type == "meta":
            raise ValueError("t is on the 'meta' device, which holds no values")
        if t.dim() == 0 and x is not None:
            t = t.expand(x.shape[0])
        if t.dim() != 1:
            raise ValueError(f"t must be a 1-D tensor of per-sample times, got shape {tuple(t.shape)}")
        if x is not None and t.shape[0] != x.shape[0]:
            raise ValueError(f"t has {t.shape[0]} times but x has batch size {x.shape[0]}")
        if x is not None:  # results follow x's dtype and device, whatever t came in as
            t = t.to(dtype=x.dtype, device=x.device)
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
        if not callable(score_fn):
            raise TypeError(f"score_fn must be a callable score_fn(x, t) -> tensor shaped like x, got {score_fn!r}")
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.event_shape = event_shape
        self.T = forward.T
        self.N = forward.N
        self._c = 0.5 if probability_flow else 1.0

    def _times(self, t, x: torch.Tensor) -> torch.Tensor:
        """t as a (B,) tensor in x's dtype and device (the forward SDE's coefficients are taken
        unchecked: the solvers' times lie in (0, T] by construction)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift f - c g^2 score and diffusion (0 for the probability flow), forward time t."""
        t = self._times(t, x)
        drift, diffusion = self.forward.drift_diffusion(x, t)
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
        _, diffusion = self.forward.drift_diffusion(self._unflatten(y), t)
        return batch_view(diffusion, y) * v
