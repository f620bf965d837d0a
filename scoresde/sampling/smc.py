"""Twisted sequential Monte Carlo for inverse problems (Wu et al. 2023, "Practical and asymptotically
exact conditional sampling in diffusion models", TDS).

Guidance alone moves samples towards the measurement but cannot reweight the prior's modes, so it
is biased wherever p(x_0 | x_t) is far from Gaussian. TDS runs n particles through a reverse kernel
p(x_s | x_t) of the prior with a proposal q(x_s | x_t) that leans towards the measurement, and
weights them by

    w  <-  w * p(x_s | x_t) p~_s(y | x_s) / (q(x_s | x_t) p~_t(y | x_t)),

the twist p~_t(y | x_t) being a likelihood guidance term's Gaussian approximation
(`PosteriorCovarianceGuidance` or `DPS`); particles are resampled (systematically) when the
effective sample size falls below n/2, and the final Tweedie estimates are resampled by their
weights. The result is exact as n -> infinity for any twist, kernel and proposal; what they change
is how many particles that takes and the discretization of the prior's chain:

* kernel="ancestral": p(x_s | x_t) = N(m_1, v I), m_1 = alpha_s G^2/sigma_t^2 x0_hat_t
  + a sigma_s^2/sigma_t^2 x_t, v = G^2 sigma_s^2/sigma_t^2 (Ho et al. 2020, `ancestral_step`);
  kernel="sde_dpmpp_2m" adds the second-order multistep term of SDE-DPM-Solver++(2M) (Lu et al.
  2022b), m = m_1 + alpha_s (1 - e^{-2h}) (x0_hat_t - x0_hat_prev) / (2 r), h the step in
  log-SNR and r = h_prev / h: the same variance, a smaller discretization error (the chain is
  Markov in (x_t, x0_hat_prev), which the particles carry);
* proposal="shift": q = N(m + v grad log p~_t(y | x_t), v I) (TDS's own);
  proposal="gaussian" (twist `PosteriorCovarianceGuidance(covariance="jacobian")`): the twist
  linearized at x_t, p~(y | x_s) ≈ N(r - H (x_s - x_t); 0, C) with H = A J, is Gaussian in x_s, so
  q ∝ N(x_s; m, v I) N(r - H (x_s - x_t); 0, C) is the exact product: precision I/v + H^T C^{-1} H,
  drawn by Matheron's rule with M x M solves (M measurements). Unlike the shift it stays accurate
  when v H^T C^{-1} H is not small (small measurement noise, late steps), so the weights stay even.

The final resampling leaves duplicates (a few hundred of 2000 in the 16-D benchmark), which limits the
accuracy at a given n more than the weights do. moves=K adds resample-move (Gilks & Berzuini 2001)
after it: K Metropolis-adjusted Langevin steps on x_eps that leave the final target p_eps(x) p~(y | x)
invariant (`preconditioned_langevin`), so duplicates diverge; each costs one evaluation of the twist,
counted in the NFE (steps + 1 + K). The measurement makes that target stiff along A's rows
(curvature ~ |A|^2 / s^2), so the steps are preconditioned by the twist's own linearization.

The particles of one call share one measurement and are not independent (resampling couples them),
unlike `sample`'s per-sample draws.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_count, check_eps, check_generator, check_positive_finite, check_shape
from .inverse import DPS, PosteriorCovarianceGuidance
from .schedules import time_grid
from .sde_solvers import kernel_transition

KERNELS = ("sde_dpmpp_2m", "ancestral")
PROPOSALS = ("gaussian", "shift")


def systematic_resample(weights: torch.Tensor, generator) -> torch.Tensor:
    """n indices drawn by systematic resampling: one uniform u, points (i + u) / n on the weights' CDF
    (each particle kept floor(n w) or ceil(n w) times; less variance than multinomial draws)."""
    n = weights.shape[0]
    u = (torch.arange(n, dtype=weights.dtype) + torch.rand((), dtype=weights.dtype, generator=generator)) / n
    return torch.searchsorted(torch.cumsum(weights, 0), u).clamp_max(n - 1)


def gaussian_proposal(mean, var: float, x, residual, rows, cov, generator):
    """Draw x_s from q ∝ N(x_s; mean, var I) N(residual - H (x_s - x); 0, C) (all flattened: mean, x of
    (B, D), residual (B, M), H = rows (B, M, D), C = cov (B, M, M)) by Matheron's rule: z ~ N(mean, var I),
    eta ~ N(0, C), x_s = z + var H^T S^{-1} (residual - H (z - x) - eta), S = C + var H H^T.
    Returns (x_s, log q(x_s) + D/2 log(2 pi var)), the constant being shared by all particles."""
    solve = lambda m, u: torch.linalg.solve(m, u[..., None])[..., 0]  # noqa: E731
    apply = lambda u: (rows @ u[..., None])[..., 0]  # noqa: E731  H u, (B, M)
    s_mat = cov + var * rows @ rows.transpose(1, 2)
    gain = lambda u: var * (rows * solve(s_mat, u)[..., None]).sum(1)  # noqa: E731  var H^T S^{-1} u
    z = mean + math.sqrt(var) * torch.randn(mean.shape, dtype=mean.dtype, generator=generator)
    noise = torch.randn(residual.shape + (1,), dtype=mean.dtype, generator=generator)
    eta = (torch.linalg.cholesky(cov) @ noise)[..., 0]
    x_s = z + gain(residual - apply(z - x) - eta)
    return x_s, gaussian_log_density(x_s - (mean + gain(residual - apply(mean - x))), var, rows, cov, s_mat)


def gaussian_log_density(d, var: float, rows, cov, s_mat):
    """log N(d; 0, P^{-1}) + D/2 log(2 pi var) for the precision P = I/var + H^T C^{-1} H (d (B, D),
    H = rows (B, M, D), C = cov (B, M, M), s_mat = S = C + var H H^T, which the callers already hold):
    -(|d|^2/var + |H d|^2_{C^{-1}})/2 + (log det S - log det C)/2, since det P = var^{-D} det S / det C."""
    hd = (rows @ d[..., None])[..., 0]
    return -0.5 * ((d ** 2).sum(1) / var + (hd * torch.linalg.solve(cov, hd[..., None])[..., 0]).sum(1)) \
        + 0.5 * (torch.linalg.slogdet(s_mat)[1] - torch.linalg.slogdet(cov)[1])


def preconditioned_langevin(x, state, step: float, t: float, sde, evaluate, generator):
    """One Metropolis-adjusted Langevin move of the particles x (B, D flattened) targeting
    pi(x) = p_t(x) p~_t(y | x), preconditioned by the twist's linearization at x:
    x' ~ N(x + Sigma g / 2, Sigma), Sigma = (I/step + H^T C^{-1} H)^{-1}, g = score + grad log p~.
    The measured directions, of curvature ~ |A|^2 / s^2, get steps of the posterior's own size and
    the others steps of variance `step`. There is no log p_t to accept with, so
    log p_t(x') - log p_t(x) is the trapezoid rule along the segment, (x' - x).(score(x) + score(x'))/2:
    exact for Gaussian p_t, error O(|x' - x|^3 |grad^3 log p_t|) otherwise (the move's only bias).
    score = (alpha_t x0_hat - x) / sigma_t^2 is read off the twist's Tweedie estimate (no extra
    evaluation). state = (log p~, grad log p~, x0_hat, r, H, C) as `linearization` returns them;
    returns (x, state, acceptance rate) after one evaluation of the twist at the proposals."""
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma2 = float(sde.alpha(tt)), float(sde.sigma(tt)) ** 2

    def drift_and_score(x, state):
        _, grad, x0, _, rows, cov = state
        score = (alpha * x0.flatten(1) - x) / sigma2
        g = score + grad.flatten(1)
        s_mat = cov + step * rows @ rows.transpose(1, 2)
        hg = (rows @ g[..., None])[..., 0]  # Sigma g = step (g - step H^T S^{-1} H g) (Woodbury)
        return x + 0.5 * step * (g - step * (rows * torch.linalg.solve(s_mat, hg[..., None])).sum(1)), score, s_mat

    mean, score, _ = drift_and_score(x, state)
    _, _, _, _, rows, cov = state
    zero = x.new_zeros(rows.shape[:2])
    x_new, log_q = gaussian_proposal(mean, step, mean, zero, rows, cov, generator)
    new = evaluate(x_new.reshape(state[2].shape))
    mean_back, score_new, s_back = drift_and_score(x_new, new)
    log_back = gaussian_log_density(x - mean_back, step, new[4], new[5], s_back)
    log_ratio = 0.5 * ((x_new - x) * (score + score_new)).sum(1) + new[0] - state[0] + log_back - log_q
    accept = torch.rand(log_ratio.shape, dtype=x.dtype, generator=generator).log() < log_ratio
    keep = lambda a, b: torch.where(accept.reshape(-1, *[1] * (a.dim() - 1)), a, b)  # noqa: E731
    return keep(x_new, x), [keep(a, b) for a, b in zip(new, state)], float(accept.double().mean())


def _check_options(twist, sde, shape, steps, eps, kernel, proposal, generator):
    pigdm = isinstance(twist, PosteriorCovarianceGuidance)
    jacobian = pigdm and twist.covariance == "jacobian"
    if not (pigdm or (isinstance(twist, DPS) and twist.step_rule == "gaussian")):
        raise TypeError(f"twist must be a PosteriorCovarianceGuidance or a DPS with step_rule='gaussian' "
                        f"(a likelihood), got {twist!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not allowed: use one of {', '.join(KERNELS)}")
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal={proposal!r} is not allowed: use one of {', '.join(PROPOSALS)}")
    if proposal == "gaussian" and not jacobian:
        raise ValueError(f"proposal='gaussian' needs the twist PosteriorCovarianceGuidance(covariance='jacobian') "
                         f"(it uses A J), got {twist!r}: pass proposal='shift' for this twist")
    shape = check_shape("shape", shape)
    if len(shape) < 2:
        raise ValueError(f"shape={shape} is not allowed: it must be (particles, *data_shape), e.g. (1000, 2)")
    check_generator(generator)
    return shape, check_count("steps", steps), check_eps(eps, sde.T)


def twisted_smc(twist, sde, shape, *, steps: int, eps: float = 1e-3, schedule="log_snr",
                kernel: str = "sde_dpmpp_2m", proposal: str = "gaussian", moves: int = 0, move_step: float = 0.1,
                generator: torch.Generator | None = None, dtype=torch.float64) -> tuple[torch.Tensor, dict]:
    """shape = (n particles, *data shape); one score evaluation (and the twist's VJPs) per step, steps + 1
    in all, on the time grid `schedule` (a name or an explicit grid, see schedules.py), then `moves`
    resample-move Langevin steps of variance `move_step` in the unmeasured directions (proposal="gaussian"
    only; one evaluation each). Returns (samples, {"nfe", "resampled": resampling steps, "final_ess":
    effective sample size of the last weights, and with moves "acceptance": the moves' mean rate})."""
    shape, steps, eps = _check_options(twist, sde, shape, steps, eps, kernel, proposal, generator)
    if isinstance(moves, bool) or not isinstance(moves, numbers.Integral):
        raise TypeError(f"moves must be an integer >= 0, got {moves!r} of type {type(moves).__name__}")
    if moves < 0:
        raise ValueError(f"moves={moves} is not allowed: it must be an integer >= 0 (0: no moves)")
    move_step = check_positive_finite("move_step", move_step)
    if moves and proposal != "gaussian":
        raise ValueError(f"moves={moves} needs proposal='gaussian' (the moves are preconditioned by its "
                         f"linearization), got proposal={proposal!r}")
    n = shape[0]
    ts = time_grid(sde, steps, eps, schedule)
    full = lambda tv: torch.full((n,), float(tv), dtype=dtype)  # noqa: E731
    if proposal == "gaussian":
        evaluate = lambda x, t: twist.linearization(x, full(t))  # noqa: E731
    else:
        evaluate = lambda x, t: twist.log_likelihood_and_grad(x, full(t))  # noqa: E731
    x = sde.prior_sampling(shape, generator=generator).to(dtype)
    ell, grad, x0, *linear = evaluate(x, ts[0])
    logw, resampled, x0_prev, h_prev = ell.clone(), 0, None, None
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
        w = torch.softmax(logw, 0)
        if 1 / float((w ** 2).sum()) < n / 2:
            idx = systematic_resample(w, generator)
            x, ell, grad, x0, linear = x[idx], ell[idx], grad[idx], x0[idx], [u[idx] for u in linear]
            x0_prev = None if x0_prev is None else x0_prev[idx]
            logw, resampled = torch.zeros_like(logw), resampled + 1
        a, g2 = kernel_transition(sde, s, t)
        st = torch.tensor([s, t], dtype=torch.float64)
        (alpha_s, _), (sigma_s, sigma_t) = sde.alpha(st).tolist(), sde.sigma(st).tolist()
        lam_s, lam_t = sde.log_snr(st).tolist()
        mean = (alpha_s * g2 / sigma_t ** 2) * x0 + (a * sigma_s ** 2 / sigma_t ** 2) * x  # ancestral_step's
        if kernel == "sde_dpmpp_2m" and x0_prev is not None:  # alpha_s G^2 / sigma_t^2 = alpha_s (1 - e^{-2h})
            mean = mean + (alpha_s * g2 / sigma_t ** 2) * (lam_s - lam_t) / (2 * h_prev) * (x0 - x0_prev)
        x0_prev, h_prev = x0, lam_s - lam_t
        var = g2 * sigma_s ** 2 / sigma_t ** 2
        if proposal == "gaussian":
            x_new, log_q = gaussian_proposal(mean.flatten(1), var, x.flatten(1), *linear, generator)
            x_new = x_new.reshape(x.shape)
        else:
            shifted = mean + var * grad
            x_new = shifted + math.sqrt(var) * torch.randn(x.shape, dtype=dtype, generator=generator)
            log_q = -((x_new - shifted) ** 2).flatten(1).sum(1) / (2 * var)
        log_p = -((x_new - mean) ** 2).flatten(1).sum(1) / (2 * var)
        ell_new, grad, x0, *linear = evaluate(x_new, s)
        logw = logw + log_p - log_q + ell_new - ell
        x, ell = x_new, ell_new
    w = torch.softmax(logw, 0)
    info = {"nfe": steps + 1 + moves, "resampled": resampled, "final_ess": 1 / float((w ** 2).sum())}
    idx = systematic_resample(w, generator)
    if moves == 0:
        return x0[idx], info
    x, state, rates = x[idx].flatten(1), [u[idx] for u in (ell, grad, x0, *linear)], []
    for _ in range(moves):
        x, state, rate = preconditioned_langevin(x, state, move_step, float(ts[-1]), sde,
                                                 lambda z: evaluate(z, ts[-1]), generator)
        rates.append(rate)
    info["acceptance"] = sum(rates) / moves
    return state[2], info
