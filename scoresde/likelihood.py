"""Exact log-likelihoods through the probability-flow ODE, and bits/dim of quantized data.

The probability-flow ODE  dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2  (Song et al. 2021,
eq. 13) is a continuous normalizing flow, so by the instantaneous change of variables
(Chen et al. 2018, thm. 1; Song et al. 2021, eq. 39)

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.

`log_likelihood` integrates the augmented state [x, delta] with dx/dt = f~, d delta/dt = div f~
from t = eps to T with torchdiffeq and returns log p_T(x(T)) + delta(T), p_T being the SDE's prior.
The solver is adaptive (ADAPTIVE_METHODS: steps chosen by rtol, atol) or a fixed-grid Runge-Kutta
method (FIXED_METHODS) stepping exactly between the points of a `scoresde.sampling.schedules` grid
eps = t_n < ... < t_0 = T: a known cost (steps times the method's stages) and a global error
O(h^order), with no error control.

* The divergence is exact (trace of each sample's Jacobian, from D vector-Jacobian products,
  vectorised with torch.func.vmap, or looped where the model cannot run under vmap) or the
  Hutchinson-Skilling estimate  E_v[v^T J v]  with probes v drawn once per sample and held fixed
  for the whole solve (redrawing them at every evaluation makes the ODE rough: dopri5 takes 12,242
  NFE instead of 92 with torchdiffeq 0.2.5).
* A batch shares one adaptive step size, but the error norm is per sample: the step is accepted
  only if every sample's error (RMS over its x, and its delta on its own, in units of
  atol + rtol |y|) is within tolerance. A hard sample shrinks the step for all and so costs NFE,
  never another sample's accuracy; each result is as accurate as if the sample were solved alone.
  (torchdiffeq's default RMS over the whole batch let one sample be off by 1.2 nats at tol 1e-3.)

`bits_per_dim` turns this into a code length for integer data v in {0, .., levels - 1}: with
uniform dequantization x = lo + (hi - lo)(v + u) / levels, u ~ U[0, 1)^D (Theis et al. 2016),

    log P(v) >= E_u[log p_x(x)] + D log((hi - lo) / levels),

estimated with K draws of u; (lo, hi) is the data range the model was trained on. The map, its
log-determinant and the bits/dim formula are scoresde.data.quantized's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchdiffeq import odeint

from ._checks import (MIN_EPS, check_count, check_data, check_generator, check_kwargs,
                      check_positive_finite, check_sde, check_tolerance)
from .data import quantized
from .data.quantized import check_data_range, check_levels, dequantize
from .sampling.ode import ADAPTIVE_SOLVERS as ADAPTIVE_METHODS
from .sampling.schedules import time_grid
from .sdes.base import SDE, ScoreFn

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")  # orders 1, 2, 2, 3, 4; as many stages

# Exact traces vmap `chunk` of the D cotangents over the whole batch at once (chunk * B * D cotangent
# elements), chunk = max(1, this // (B * D)), the rest in a loop over the retained graph. Small: a
# vmapped backward's intermediates are chunk times the model's, and on a CPU they fall out of cache.
# Measured per exact divergence (1 thread, experiments/bench/likelihood.py's 64-D mixture, B = 1000):
# all 64 vmapped 990 ms, chunks of 16 1100 ms, of 4 490 ms, one at a time 310 ms; in 2-D (B = 1000)
# both cotangents stay in one vmap.
_EXACT_TRACE_ELEMENTS = 2 ** 16


class LogLikelihood(NamedTuple):
    """log_p: per-sample log p_eps(x) in nats (B,); nfe: drift evaluations; z: x(T);
    prior_logp: log p_T(z) (B,), so that log_p - prior_logp is the integrated divergence."""

    log_p: torch.Tensor
    nfe: int
    z: torch.Tensor
    prior_logp: torch.Tensor


class BitsPerDim(NamedTuple):
    """bpd: per-sample dequantization bound in bits/dim (B,), the mean over the K draws;
    bpd_draws: (K, B) per draw; nfe: drift evaluations over all draws."""

    bpd: torch.Tensor
    bpd_draws: torch.Tensor
    nfe: int


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, eps: float = 1e-5,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   steps: int | None = None, schedule: str = "uniform_t",
                   trace: str = "exact", probes: str = "rademacher", n_probes: int = 1,
                   generator: torch.Generator | None = None) -> LogLikelihood:
    """Per-sample log p_eps(x) in nats through the probability-flow ODE (module docstring).

    x: data of shape (B, ...), batch first. eps: start time of the flow, in (0, T).
    method: an adaptive torchdiffeq solver (ADAPTIVE_METHODS), with tolerances rtol, atol applied
    per sample; or a fixed-grid one (FIXED_METHODS) taking `steps` steps on the `schedule` grid of
    scoresde.sampling.schedules.time_grid, for approximate likelihoods at a known NFE (monitoring a
    training run, a quick comparison): its error shrinks as steps^-order, but nothing controls it.
    (uniform_t is the default grid: on a 2-D mixture under the VP SDE, rk4's mean error on it was
    8-16x smaller than on log_snr at 8-24 steps; for the VE SDE the two grids coincide.)
    trace: "exact" (D vector-Jacobian products: for low dimensions) or "hutchinson" (n_probes fixed
    `probes` per sample, drawn from `generator`: unbiased, for high dimensions).
    """
    _check_args(sde, x, eps, rtol, atol, method, steps, trace, probes, n_probes)
    check_generator(generator)
    if steps is None:
        ts = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
        options = {"norm": _per_sample_norm, "step_t": ts[1:]}
    else:
        ts = time_grid(sde, steps, eps, schedule).flip(0).to(x.device, x.dtype)
        options = {}
        if not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError(f"steps={steps} is too many for {x.dtype}: the {schedule!r} grid has "
                             f"repeated times in it; use fewer steps or float64 data")
    ode = _ProbabilityFlow(score_fn, sde)
    _check_model(score_fn, x, eps)
    v = None
    if trace == "hutchinson":
        v = _draw_probes(probes, (n_probes,) + tuple(x.shape), generator).to(x.device, x.dtype)

    def rhs(t, state):
        xt, _ = state
        # step_t makes the last step end exactly at T; only the initial-step heuristic may probe past it
        drift, div = ode.drift_and_divergence(xt, t.clamp(max=sde.T).expand(xt.shape[0]), v)
        finite = torch.isfinite(drift.flatten(1)).all(1) & torch.isfinite(div)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise FloatingPointError(f"the probability-flow drift is not finite at t={min(float(t), sde.T):.6g} for "
                                     f"samples {bad[:10]}: check score_fn (and eps={eps})")
        return drift, div

    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        try:
            xs, deltas = odeint(rhs, (x, delta0), ts, rtol=rtol, atol=atol, method=method, options=options)
        except AssertionError as e:  # torchdiffeq's "underflow in dt": the step size shrank to 0
            if "underflow" not in str(e):
                raise
            raise FloatingPointError(f"the {method} solver's step size underflowed to 0: the "
                                     f"probability-flow drift is too large or stiff to integrate at rtol={rtol}, "
                                     f"atol={atol}; check score_fn's scale (and eps={eps})") from None
    z, delta = xs[-1], deltas[-1]
    prior_logp = sde.prior_logp(z)
    log_p = prior_logp + delta
    return LogLikelihood(log_p, ode.nfe, z, prior_logp)


def bits_per_dim(score_fn: ScoreFn, sde: SDE, v: torch.Tensor, *, levels: int,
                 data_range: tuple[float, float] = (-1.0, 1.0), n_draws: int = 1,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
                 **likelihood_kwargs) -> BitsPerDim:
    """Upper bound on -log2 P(v) / D for integer data v in {0, .., levels - 1} (module docstring).

    `levels` is the data set's number of levels (17 for sklearn digits, 256 for 8-bit images) and
    `data_range` = (lo, hi) the interval the model's data lives in: x = lo + (hi - lo)(v + u)/levels
    (scoresde.data trains on (-1, 1)). Each of the n_draws dequantizations u ~ U[0, 1)^D
    (scoresde.data.quantized.dequantize, rounded to `dtype`) is drawn from `generator`, which also
    draws the Hutchinson probes; likelihood_kwargs go to `log_likelihood`.
    bpd = -(mean_k log p_x(x_k) + D log((hi - lo)/levels)) / (D log 2)  (quantized.bits_per_dim).
    """
    if not torch.is_tensor(v) or torch.is_floating_point(v) or torch.is_complex(v) or v.dim() < 2:
        raise TypeError(f"v must be an integer tensor of levels, shape (batch, ...), got "
                        f"{getattr(v, 'dtype', type(v).__name__)}: pass the quantized data, "
                        f"bits_per_dim dequantizes it")
    if v.dtype == torch.bool or v.shape[0] == 0 or v.numel() == 0:
        raise ValueError(f"v must be a non-empty integer tensor of levels, got dtype {v.dtype} and shape {tuple(v.shape)}")
    check_data_range(data_range)
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype={dtype!r} is not allowed: use torch.float32 or torch.float64")
    if max(abs(float(a)) for a in data_range) > torch.finfo(dtype).max / 4:
        raise ValueError(f"data_range={data_range!r} is not allowed with dtype={dtype}: the dequantized data "
                         f"would overflow it; use dtype=torch.float64 or a smaller range")
    check_generator(generator)
    check_kwargs("bits_per_dim (through log_likelihood)", log_likelihood, likelihood_kwargs,
                 reserved=("score_fn", "sde", "x", "generator"))
    if levels is None:
        raise ValueError("levels=None is not allowed: bits_per_dim is for quantized data; use "
                         "log_likelihood for continuous data")
    check_levels(levels)
    check_count("n_draws", n_draws)
    if int(v.min()) < 0 or int(v.max()) >= levels:
        raise ValueError(f"v has values in [{int(v.min())}, {int(v.max())}], outside [0, {levels}) "
                         f"for levels={levels}")
    num_dims = v[0].numel()
    bpd, nfe = [], 0
    for _ in range(n_draws):
        x = dequantize(v, levels, generator=generator, dtype=dtype, data_range=data_range)
        res = log_likelihood(score_fn, sde, x, generator=generator, **likelihood_kwargs)
        bpd.append(quantized.bits_per_dim(res.log_p, levels, num_dims, data_range))
        nfe += res.nfe
    draws = torch.stack(bpd)
    return BitsPerDim(draws.mean(0), draws, nfe)


class _ProbabilityFlow:
    """The probability-flow drift f~(x, t) and its divergence, counting evaluations.

    The vector-Jacobian products of the divergence run batched (one vmapped backward pass) where the
    model allows it, else one backward pass per cotangent over the retained graph: modules whose
    backward queries a memory format (diffusers' UNet2DModel, any network in channels_last) fail
    under vmap with "NYI: querying is_contiguous inside of vmap". The first evaluation tries vmap
    and keeps whichever works; both give the same products.
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE, batched: bool | None = None):
        self.flow = sde.reverse(score_fn, probability_flow=True)
        self.nfe = 0
        self.batched = batched  # None: try vmap on the first evaluation

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.flow.sde(x, t)[0]

    def drift_and_divergence(self, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None):
        """f~(x, t) and div_x f~ per sample: exact when probes is None, else mean_k v_k^T J v_k."""
        self.nfe += 1
        if self.batched is None:
            try:
                result = self._drift_and_divergence(x, t, probes, batched=True)
            except RuntimeError as err:
                if "vmap" not in str(err):
                    raise
                self.batched = False
            else:
                self.batched = True
                return result
        return self._drift_and_divergence(x, t, probes, self.batched)

    def _drift_and_divergence(self, x, t, probes, batched: bool):
        """Row i of sample b's Jacobian is the vector-Jacobian product with e_i in every sample, valid
        because f~ acts on each sample independently. Plain autograd rather than torch.func.vjp:
        kernel-only SDEs take f and g^2 by autograd in t."""
        vjps = _batched_vjps if batched else _looped_vjps
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            drift = self.drift(xg, t)
            if probes is not None:
                products = vjps(drift, xg, probes, retain_graph=False)  # (K, B, ...)
                return drift.detach(), (products * probes).flatten(2).sum(-1).mean(0)
            B, D = x.shape[0], x[0].numel()
            basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:])
            chunk = max(1, _EXACT_TRACE_ELEMENTS // (B * D)) if batched else 1
            div = torch.zeros(B, dtype=x.dtype, device=x.device)
            for i in range(0, D, chunk):
                e = basis[i:i + chunk].expand(-1, *x.shape)
                rows = vjps(drift, xg, e, retain_graph=i + chunk < D).reshape(-1, B, D)
                div += torch.diagonal(rows, offset=i, dim1=0, dim2=2).sum(-1)
        return drift.detach(), div


def _batched_vjps(out: torch.Tensor, x: torch.Tensor, cotangents: torch.Tensor,
                  retain_graph: bool) -> torch.Tensor:
    """v^T d out / d x for each v in cotangents (K, *out.shape), in one vmapped backward pass."""
    (g,) = torch.autograd.grad(out, x, cotangents, retain_graph=retain_graph, is_grads_batched=True)
    return g


def _looped_vjps(out: torch.Tensor, x: torch.Tensor, cotangents: torch.Tensor,
                 retain_graph: bool) -> torch.Tensor:
    """The same products as `_batched_vjps`, one backward pass each (for modules vmap cannot run)."""
    last = len(cotangents) - 1
    return torch.stack([torch.autograd.grad(out, x, v, retain_graph=retain_graph or k < last)[0]
                        for k, v in enumerate(cotangents)])


def _per_sample_norm(ratios: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """max over samples of max(RMS of x's error ratios, |delta's error ratio|)."""
    x_ratio, delta_ratio = ratios
    per_sample = torch.maximum(x_ratio.flatten(1).pow(2).mean(1).sqrt(), delta_ratio.abs())
    return per_sample.max()


def _draw_probes(kind: str, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Rademacher (+-1) or standard Gaussian probes: both have E[v v^T] = I."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(torch.get_default_dtype()) * 2 - 1
    return torch.randn(shape, generator=generator)


def _check_args(sde, x, eps, rtol, atol, method, steps, trace, probes, n_probes) -> None:
    check_sde(sde)
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor of shape (batch, ...), got "
                        f"{type(x).__name__ if not torch.is_tensor(x) else x.dtype}")
    check_data("x", x, half=False)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (batch, ...) with a non-empty batch, got {tuple(x.shape)}")
    finite = torch.isfinite(x.flatten(1)).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"x has NaN or infinite entries in samples {bad[:10]}"
                         f"{' ...' if len(bad) > 10 else ''}")
    eps = check_positive_finite("eps", eps)
    if not MIN_EPS <= eps < sde.T:
        raise ValueError(f"eps={eps!r} is not allowed: it must lie in [{MIN_EPS:g}, T={sde.T})")
    check_tolerance("rtol", rtol)
    check_tolerance("atol", atol)
    if method in ADAPTIVE_METHODS and steps is not None:
        raise ValueError(f"steps={steps!r} is not allowed with the adaptive method={method!r}, whose "
                         f"steps rtol and atol choose: drop steps, or use a fixed-grid method, one of "
                         f"{FIXED_METHODS}")
    if method in FIXED_METHODS and steps is None:
        raise ValueError(f"method={method!r} is a fixed-grid solver and needs steps (an integer >= 1)")
    if method in FIXED_METHODS:
        check_count("steps", steps)
    elif method not in ADAPTIVE_METHODS:
        raise ValueError(f"method={method!r} is not allowed: use an adaptive torchdiffeq solver, one of "
                         f"{ADAPTIVE_METHODS}, or a fixed-grid one with steps, one of {FIXED_METHODS}")
    if trace not in TRACES:
        raise ValueError(f"trace={trace!r} is not allowed: use one of {TRACES}")
    if probes not in PROBES:
        raise ValueError(f"probes={probes!r} is not allowed: use one of {PROBES}")
    check_count("n_probes", n_probes)


def _check_model(score_fn: ScoreFn, x: torch.Tensor, eps: float) -> None:
    """One score evaluation at t = eps, to report a model/data mismatch in the user's terms."""
    t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    try:
        with torch.no_grad():
            out = score_fn(x, t)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"score_fn cannot take x of shape {tuple(x.shape)} (does the model expect "
                         f"another data shape?): {err}") from err
    if not torch.is_tensor(out) or out.shape != x.shape:
        raise ValueError(f"score_fn returned shape {tuple(getattr(out, 'shape', ()))} for x of shape "
                         f"{tuple(x.shape)}: the score must be shaped like x")
