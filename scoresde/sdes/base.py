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

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_view(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (B,) so it broadcasts against x of shape (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


def check_real(name: str, value) -> float:
    """Return value as a float if it is a real number (int, float or numpy scalar; not a bool, a
    string or a tensor: no silent conversion), else raise TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {value!r} "
                        f"of type {type(value).__name__}")
    return float(value)


def check_positive_finite(name: str, value, allow_zero: bool = False) -> float:
    """Return value as a float, or raise ValueError naming it and what is allowed."""
    v = check_real(name, value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed: it must be finite and {allowed}")
    return v


def check_tolerance(name: str, value) -> float:
    """Return an ODE/SDE solver tolerance in (0, 1] as a float, or raise naming it (a tolerance above 1
    lets adaptive solvers take steps past the end of the interval: NaN times were observed at 3e38)."""
    v = check_positive_finite(name, value)
    if v > 1:
        raise ValueError(f"{name}={value!r} is not allowed: a solver tolerance must lie in (0, 1]")
    return v


def check_steps(name: str, value) -> int:
    """Return value as an int >= 1, or raise naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} is not allowed: it must be an integer >= 1")
    return int(value)


def check_data(name: str, x, half: bool = True) -> torch.Tensor:
    """Raise unless x is a real floating-point tensor of shape (batch, ...) holding data (not on the
    'meta' device); float16/bfloat16 only when `half` (their range, 65504 for float16, is too small
    for sigma^2 of a VE SDE, so samplers and the likelihood ask for float32 or float64)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, ...), got {type(x).__name__}")
    allowed = (torch.float16, torch.bfloat16, torch.float32, torch.float64) if half else (torch.float32, torch.float64)
    if x.dtype not in allowed:
        raise TypeError(f"{name} has dtype {x.dtype}; it must be one of {', '.join(map(str, allowed))}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device, which holds no values; move it to 'cpu' or 'cuda'")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (batch, ...), got a 0-d tensor")
    return x


def check_shape(name: str, shape) -> tuple[int, ...]:
    """Return shape as a tuple of ints >= 1, or raise naming it."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a tuple of positive ints such as (batch, 2), got {shape!r}")
    if len(shape) == 0 or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"{name}={tuple(shape)!r} is not allowed: it must be (batch, *data_shape) "
                         f"with integer sizes >= 1")
    return tuple(int(n) for n in shape)


def check_kwargs(what: str, fn, kwargs: dict, reserved=()) -> None:
    """Raise TypeError for a keyword that fn does not take (and is not reserved), suggesting the
    closest one it takes; fn taking **kwargs accepts everything."""
    import difflib
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [k for k, p in params.items() if k not in reserved and k != "self"
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{what} takes no argument {key!r}{hint} (allowed: {', '.join(allowed) or 'none'})")


# Smallest start/end time eps of sampling and likelihood: float32 times below ~1e-6 are too coarse
# for sigma(t) near 0 (and eps = 1e-300 rounds to t = 0 in float32).
MIN_EPS = 1e-6


def check_sde(sde) -> None:
    """Raise TypeError unless sde provides the SDE contract (e.g. scoresde.VPSDE(), get_sde(name))."""
    if not all(hasattr(sde, a) for a in ("T", "sde", "marginal_prob", "prior_sampling", "prior_logp", "reverse")):
        raise TypeError(f"sde must be an SDE such as scoresde.VPSDE() (or scoresde.get_sde(name)), got {sde!r}")


def check_generator(generator) -> None:
    """Raise TypeError unless generator is None or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r} "
                        f"(use torch.Generator().manual_seed(seed) for a seed)")


class SDE(abc.ABC):
    """A forward SDE with a Gaussian perturbation kernel p_0t(x_t | x_0).

    Subclasses define the drift and diffusion, the kernel's mean and std, and the prior.
    `N` is the number of steps of the discrete chain that `discretize` reproduces.
    """

    def __init__(self, N: int = 1000, T: float = 1.0):
        self.N = check_steps("N", N)
        self.T = check_positive_finite("T", T)
        if self.T < 100 * MIN_EPS:
            raise ValueError(f"T={T!r} is not allowed: it must be >= {100 * MIN_EPS:g}, so that the times "
                             f"eps in [{MIN_EPS:g}, T) of sampling and likelihood stay resolvable in float32")

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
