"""Convergence orders of the deterministic solvers against the exact probability-flow solution.

Truth: for Gaussian data N(m, s^2 I) the probability-flow ODE is linear and solves in closed form,
x_t - alpha_t m = sqrt(v_t / v_T) (x_T - alpha_T m),  v_t = alpha_t^2 s^2 + sigma_t^2
(with y = x - alpha m, dy/dt = (f + g^2 / (2 v)) y = (v' / 2v) y). On a smooth mixture (overlapping
components, no separatrix) the truth is a dopri8 solve at rtol = atol = 1e-12 from the same x_T.
Orders are log2 of the error ratio when the step count doubles (observed: DDIM 0.92-0.98, 2M
1.9-2.0, 3M 2.5-5.5; UniPC-style predictor order p with its corrector: p + 1, i.e. 1.99-2.02,
2.97-3.02, 3.78-4.01 and 4.9-5.2 for p = 1, 2, 3, 4). 3M's first two steps are of order 1 and 2,
which bounds its asymptotic order by 2 in principle; their error constant is tiny because x0 barely
varies at low log-SNR, so 2.5-3 is observed on the mixture (and more on Gaussians, where uniform
log-SNR steps superconverge).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from scoresde.analytic import GaussianMixture, gaussian_score_fn
from scoresde.sampling import sample, time_grid
from scoresde.sdes import VESDE, VPSDE
from scoresde.sdes.kernel import KernelSDE
from scoresde.sdes.learned import LearnedSDE

EPS = 1e-3
SDES = {"vp": VPSDE(), "ve": VESDE(sigma_max=20.0)}



def gaussian_problem(sde, m=0.7, s=0.3):
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tt = torch.tensor([sde.T, EPS], dtype=torch.float64)
    a, v = sde.alpha(tt), sde.alpha(tt) ** 2 * s ** 2 + sde.sigma(tt) ** 2
    return gaussian_score_fn(sde, m, s), x_T, a[1] * m + (v[1] / v[0]).sqrt() * (x_T - a[0] * m)


def mixture_problem(sde):
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.8, 0.6], [0.6, 0.4])
    score = mix.score_fn(sde)
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flow = sde.reverse(score, probability_flow=True)
    ref = odeint(flow, x_T, torch.tensor([sde.T, EPS], dtype=torch.float64), method="dopri8",
                 rtol=1e-12, atol=1e-12)[-1]
    return score, x_T, ref


def observed_orders(sde, problem, method, steps, **options):
    """RMS errors at eps for each step count, and the orders between consecutive counts."""
    score, x_T, ref = problem
    errs = [(sample(score, sde, method=method, steps=n, x_T=x_T, denoise=False, **options) - ref)
            .pow(2).mean().sqrt().item() for n in steps]
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


# (method, options, lowest allowed order, highest allowed order)
SOLVERS = [
    ("ddim", {}, 0.85, 1.3),
    ("dpmpp_2m", {}, 1.75, 2.4),
    ("dpmpp_3m", {}, 2.3, 6.0),
    ("dpmpp_3m", {"schedule": "karras"}, 2.3, 6.0),
    ("ode", {"solver": "euler", "schedule": "log_snr"}, 0.85, 1.4),
    ("ode", {"solver": "midpoint", "schedule": "log_snr"}, 1.8, 2.4),
    ("ode", {"solver": "rk4", "schedule": "log_snr"}, 3.7, 4.6),
    # UniPC-style: the corrector raises the predictor's order p to p + 1 at no extra NFE
    ("unipc", {"order": 1}, 1.8, 2.3),
    ("unipc", {"order": 2}, 2.75, 3.3),
    ("unipc", {}, 3.4, 4.6),
    ("unipc", {"corrector": False}, 2.3, 6.0),  # predictor alone: 3M's orders (start-up limited)
]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("method,options,lo,hi", SOLVERS)
def test_convergence_order(sde_name, data, method, options, lo, hi):
    sde = SDES[sde_name]
    problem = gaussian_problem(sde) if data == "gaussian" else mixture_problem(sde)
    errs, orders = observed_orders(sde, problem, method, [40, 80, 160], **options)
    assert errs[-1] < errs[0]
    assert lo < orders[-1] < hi, f"{method} {options}: errors {errs}, orders {orders}"


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_unipc_order_4_with_its_corrector_converges_at_order_5(sde_name, data):
    """Predictor order 4, corrector order 5 (observed 4.9-5.2 from 40 to 80 steps). At 160 steps
    the errors (1e-8 - 1e-9) approach the start-up steps' floor, so the pair below is used."""
    sde = SDES[sde_name]
    problem = gaussian_problem(sde) if data == "gaussian" else mixture_problem(sde)
    errs, orders = observed_orders(sde, problem, "unipc", [20, 40, 80], order=4)
    assert 4.5 < orders[-1] < 5.6, f"unipc order 4: errors {errs}, orders {orders}"


class CosinePlugin(KernelSDE):
    """A kernel-only SDE (alpha, sigma and nothing else), as a user's plugin would define it:
    the cosine schedule alpha = cos(pi/2 u), sigma = sin(pi/2 u), u = (t + 0.008)/1.008 on T = 0.99."""

    def __init__(self):
        super().__init__(N=1000, T=0.99)

    def _angle(self, t):
        return 0.5 * math.pi * (t + 0.008) / 1.008

    def alpha(self, t):
        return torch.cos(self._angle(t))

    def sigma(self, t):
        return torch.sin(self._angle(t))


@pytest.mark.parametrize("sde_name", ["plugin", "learned"])
@pytest.mark.parametrize("method,options,lo,hi", [("unipc", {}, 3.4, 4.6), ("dpmpp_2m", {}, 1.75, 2.4)])
def test_order_on_kernel_only_sdes(sde_name, method, options, lo, hi):
    """Through alpha, sigma and the log-SNR alone: a kernel-only plugin and the learned (VDM) schedule,
    at a random initialization, keep the solver's order against the exact Gaussian solution."""
    torch.manual_seed(0)
    sde = CosinePlugin() if sde_name == "plugin" else LearnedSDE(n_features=16).double()
    errs, orders = observed_orders(sde, gaussian_problem(sde), method, [40, 80, 160], **options)
    assert lo < orders[-1] < hi, f"{method} on {sde_name}: errors {errs}, orders {orders}"


@pytest.mark.parametrize("h", [0.05, 0.7, 3.0])
def test_unipc_quadrature_weights_integrate_polynomials_exactly(h):
    """sum_j w_j P(u_j) = int_0^h e^{-(h-u)} P(u) du for every P of degree < #nodes (truth: scipy quad)."""
    from scipy.integrate import quad

    from scoresde.sampling.exponential import quadrature_weights
    nodes = [-2.1 * h, -h, 0.0, h]
    w = quadrature_weights(nodes, h)
    for P in [lambda u: 1.0, lambda u: u - 0.3, lambda u: u * u - 3 * u, lambda u: u ** 3 + 1]:
        want = quad(lambda u: math.exp(-(h - u)) * P(u), 0, h, epsabs=1e-14, epsrel=1e-12)[0]
        assert math.isclose(sum(wj * P(uj) for wj, uj in zip(w, nodes)), want, rel_tol=1e-9, abs_tol=1e-13)


def dpm_solver_pp_multistep(score, sde, x, ts, order: int, lower_order_final: bool) -> torch.Tensor:
    """DPM-Solver++ in its published multistep form (Lu et al. 2022b, eq. 9 with the Taylor terms of
    x0 integrated exactly): x_s = (sigma_s/sigma_t) x_t + alpha_s [phi_0 x0 + phi_1 x0' + phi_2 x0''],
    phi_0 = 1 - e^-h, phi_1 = h - phi_0, phi_2 = h^2/2 - phi_1, the derivatives in lambda from divided
    differences of the last `order` data predictions; order 1 is DDIM. The oracle for the
    package's quadrature-weight form, followed by the final Tweedie step at eps."""
    lam, sig, alp = (v.tolist() for v in (sde.log_snr(ts), sde.sigma(ts), sde.alpha(ts)))
    n, hist = len(ts) - 1, []
    for i in range(n):
        t = torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype)
        hist = (hist + [(x + sig[i] ** 2 * score(x, t)) / alp[i]])[-order:]
        used = hist[-min(len(hist), n - i):] if lower_order_final else hist
        h = lam[i + 1] - lam[i]
        phi0 = -math.expm1(-h)
        phi1, update = h - phi0, phi0 * used[-1]
        if len(used) >= 2:
            h0 = lam[i] - lam[i - 1]
            d1 = (used[-1] - used[-2]) / h0
            if len(used) == 3:
                h1 = lam[i - 1] - lam[i - 2]
                dd = (d1 - (used[-2] - used[-3]) / h1) / (h0 + h1)
                update = update + phi1 * (d1 + h0 * dd) + (h * h / 2 - phi1) * 2 * dd
            else:
                update = update + phi1 * d1
        x = (sig[i + 1] / sig[i]) * x + alp[i + 1] * update
    t = torch.full((x.shape[0],), float(ts[-1]), dtype=x.dtype)
    return (x + sig[-1] ** 2 * score(x, t)) / alp[-1]


@pytest.mark.parametrize("method, order", [("ddim", 1), ("dpmpp_2m", 2), ("dpmpp_3m", 3)])
@pytest.mark.parametrize("lower_order_final", [False, True])
def test_predictor_settings_are_ddim_and_dpm_solver_pp(method, order, lower_order_final):
    """ddim / dpmpp_2m / dpmpp_3m, the predictor of `multistep` without corrector (a Vandermonde
    moment solve), match DDIM and DPM-Solver++ 2M/3M in their published divided-difference form
    (the oracle above), start-up and lower-order final steps included."""
    sde = SDES["vp"]
    score, x_T, _ = mixture_problem(sde)
    ts = time_grid(sde, 6, EPS, "karras")
    got = sample(score, sde, method=method, steps=6, eps=EPS, x_T=x_T, schedule="karras",
                 lower_order_final=lower_order_final)
    want = dpm_solver_pp_multistep(score, sde, x_T, ts, order, lower_order_final)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
