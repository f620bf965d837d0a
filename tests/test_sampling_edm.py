"""The `edm` sampler (Karras et al. 2022, Alg. 2) and the stochastic samplers on every kernel SDE.

Truths used: with S_churn = 0 the sampler is Heun's method on the probability-flow ODE written in
EDM's variables, dx~/ds = (x~ - D(x~; s)) / s with x~ = x / alpha, s = sigma / alpha and D Tweedie's
x0, integrated here by a loop of its own; Heun's method is of order 2 against the closed-form flow of
Gaussian data; and a sampler driven by the exact mixture score draws from the mixture, on sub-VP and
cosine SDEs as on VP and VE, also when part of the score comes in as a guidance term.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.analytic import gaussian_score_fn
from scoresde.sampling import sample, time_grid
from scoresde.sdes import VESDE, VPSDE, get_sde
from test_sampling import MIX, N, check_matches_mixture, truth  # noqa: F401  (truth is a fixture)

EPS = 1e-3


def heun_in_edm_variables(score, sde, x_T, steps):
    """Heun's method on dx~/ds = (x~ - D(x~; s)) / s over the Karras grid, D = (x + sigma^2 score)/alpha."""
    ts = time_grid(sde, steps, EPS, "karras")

    def slope(x_scaled, t):
        tt = torch.full((x_scaled.shape[0],), float(t), dtype=x_scaled.dtype)
        a, sg = sde.alpha(t), sde.sigma(t)
        x = a * x_scaled
        return (x_scaled - (x + sg ** 2 * score(x, tt)) / a) / (sg / a)

    y = x_T / sde.alpha(ts[0])
    for t, t_next in zip(ts[:-1], ts[1:]):
        ds = sde.sigma(t_next) / sde.alpha(t_next) - sde.sigma(t) / sde.alpha(t)
        k1 = slope(y, t)
        k2 = slope(y + ds * k1, t_next)
        y = y + ds * (k1 + k2) / 2
    return sde.alpha(ts[-1]) * y


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_no_churn_is_heun_on_the_probability_flow(sde_name):
    sde = {"vp": VPSDE(), "ve": VESDE(sigma_max=20.0), "subvp": get_sde("subvp")}[sde_name]
    score = MIX.score_fn(sde)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sample(score, sde, method="edm", steps=12, x_T=x_T, eps=EPS, denoise=False)
    torch.testing.assert_close(ours, heun_in_edm_variables(score, sde, x_T, 12), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_no_churn_converges_at_order_two(sde_name):
    """Against x_t - alpha_t m = sqrt(v_t / v_T) (x_T - alpha_T m), v = alpha^2 s^2 + sigma^2 (Gaussian data)."""
    sde, m, s = {"vp": VPSDE(), "ve": VESDE(sigma_max=20.0)}[sde_name], 0.7, 0.3
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tt = torch.tensor([sde.T, EPS], dtype=torch.float64)
    a, v = sde.alpha(tt), sde.alpha(tt) ** 2 * s ** 2 + sde.sigma(tt) ** 2
    exact = a[1] * m + (v[1] / v[0]).sqrt() * (x_T - a[0] * m)
    errs = [(sample(gaussian_score_fn(sde, m, s), sde, method="edm", steps=n, x_T=x_T, eps=EPS, denoise=False)
             - exact).pow(2).mean().sqrt().item() for n in (40, 80, 160)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.8 < p < 2.4 for p in orders), (errs, orders)


def test_churn_draws_noise_only_inside_its_window():
    """S_tmax below every grid level: no churn, the result equals S_churn = 0 exactly."""
    sde = VPSDE()
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(method="edm", steps=10, x_T=x_T, eps=EPS)
    plain = sample(MIX.score_fn(sde), sde, **kw)
    outside = sample(MIX.score_fn(sde), sde, S_churn=40, S_tmin=0.0, S_tmax=1e-6, **kw,
                     generator=torch.Generator().manual_seed(1))
    inside = sample(MIX.score_fn(sde), sde, S_churn=40, **kw, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, outside) and not torch.allclose(plain, inside)


@pytest.mark.parametrize("sde_name", ["subvp", "cosine"])
@pytest.mark.parametrize("method,steps,options", [
    ("edm", 60, {"S_churn": 10}), ("dpmpp_2m_sde", 50, {}), ("dpmpp_3m_sde", 50, {}), ("ddim", 100, {"eta": 1.0}),
])
def test_stochastic_samplers_with_guidance_on_other_kernels(sde_name, method, steps, options, truth):  # noqa: F811
    """The mixture's score given as a Gaussian's score plus the difference as a guidance term."""
    sde = get_sde(sde_name)
    full, base = MIX.score_fn(sde), gaussian_score_fn(sde, 0.0, 3.0)
    x = sample(base, sde, (N, 2), method=method, steps=steps, guidance=lambda x, t: full(x, t) - base(x, t),
               generator=torch.Generator().manual_seed(3), **options)
    check_matches_mixture(x, truth)
