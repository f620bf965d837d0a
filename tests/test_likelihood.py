"""Probability-flow log-likelihood and bits/dim against closed forms and an independent reference.

Truths used here:
  * Gaussian data N(m, s^2 I): p_t = N(alpha_t m, v_t I), v_t = alpha_t^2 s^2 + sigma_t^2, and the flow
    is affine: x_T = alpha_T m + sqrt(v_T / v_eps)(x - alpha_eps m), int div = (D/2) log(v_T / v_eps),
    so  log_likelihood(x) = log N(x_T; 0, prior_std^2 I) + (D/2) log(v_T / v_eps)  exactly.
  * Gaussian mixtures: the ODE gives log p_eps(x) - log p_T(z) + log prior(z) (z = x(T)), with
    p_t the exact perturbed mixture density: the prior-mismatch term is computed exactly.
  * An independent reference: scipy's DOP853 at rtol = atol = 1e-10 in float64 on the whole batch,
    with the mixture's divergence in closed form,
        div score = sum_k r_k (||a_k||^2 - D / v_k) - ||score||^2,  a_k = (alpha mu_k - x) / v_k.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import scoresde.likelihood as lik
from scoresde.analytic import GaussianMixture, gaussian_score_fn
from scoresde.likelihood import bits_per_dim, log_likelihood
from scoresde.sdes import VESDE, VPSDE, CosineVPSDE
from scoresde.sdes.learned import LearnedSDE

EPS = 1e-5


def mixture(dim: int) -> GaussianMixture:
    return GaussianMixture.ring(n_modes=8, radius=4.0 if dim == 2 else 3.0, std=0.5, dim=dim)


def mixture_pf_divergence(gm: GaussianMixture, sde, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form div of the probability-flow drift f x - g^2 score / 2 (module docstring)."""
    alpha, var = gm._moments(sde, t)  # (B,), (B, K)
    r = torch.softmax(gm.component_log_prob(x, t, sde), dim=1)
    a = (alpha[:, None, None] * gm.means[None] - x[:, None, :]) / var[:, :, None]
    score = (r[:, :, None] * a).sum(1)
    div_score = (r * (a.pow(2).sum(-1) - gm.dim / var)).sum(1) - score.pow(2).sum(1)
    return gm.dim * sde.f(t) - 0.5 * sde.g2(t) * div_score


def reference_log_likelihood(gm: GaussianMixture, sde, x: torch.Tensor, eps: float = EPS):
    """scipy DOP853 (rtol = atol = 1e-10, float64) on the flattened batch [x, delta], closed-form divergence."""
    B, D = x.shape

    def rhs(t, y):
        xt = torch.from_numpy(y[:B * D].reshape(B, D))
        tt = torch.full((B,), t, dtype=torch.float64)
        drift = sde.f(tt)[:, None] * xt - 0.5 * sde.g2(tt)[:, None] * gm.score(xt, tt, sde)
        return np.concatenate([drift.flatten().numpy(), mixture_pf_divergence(gm, sde, xt, tt).numpy()])

    y0 = np.concatenate([x.flatten().numpy(), np.zeros(B)])
    sol = solve_ivp(rhs, (eps, sde.T), y0, method="DOP853", rtol=1e-10, atol=1e-10)
    z = torch.from_numpy(sol.y[:B * D, -1].reshape(B, D))
    return sde.prior_logp(z) + torch.from_numpy(sol.y[B * D:, -1]), z


def exact_mismatch_truth(gm, sde, x, z, eps=EPS):
    """log p_eps(x) - log p_T(z) + log prior(z): what the ODE with the SDE's prior must return."""
    B = x.shape[0]
    t_eps = torch.full((B,), eps, dtype=torch.float64)
    t_T = torch.full((B,), sde.T, dtype=torch.float64)
    return gm.log_prob(x, t_eps, sde) - gm.log_prob(z, t_T, sde) + sde.prior_logp(z)


def gaussian_flow_truth(sde, x, m, s, eps=EPS):
    """Closed-form (log_likelihood, x_T) for N(m, s^2 I) data (module docstring)."""
    B, D = x.shape[0], x[0].numel()
    t_eps = torch.full((B,), eps, dtype=torch.float64)
    t_T = torch.full((B,), sde.T, dtype=torch.float64)
    a0, aT = sde.alpha(t_eps).detach(), sde.alpha(t_T).detach()
    v0 = a0 ** 2 * s ** 2 + sde.sigma(t_eps).detach() ** 2
    vT = aT ** 2 * s ** 2 + sde.sigma(t_T).detach() ** 2
    xT = aT[:, None] * m + torch.sqrt(vT / v0)[:, None] * (x - a0[:, None] * m)
    return sde.prior_logp(xT) + 0.5 * D * torch.log(vT / v0), xT


SDES = {"vp": VPSDE, "ve": lambda: VESDE(sigma_max=20.0), "cosine": CosineVPSDE, "learned": LearnedSDE}


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_data_closed_form(name):
    sde, m, s = SDES[name](), 0.7, 0.3
    torch.manual_seed(0)
    x = m + s * torch.randn(32, 3, dtype=torch.float64)
    truth, xT = gaussian_flow_truth(sde, x, m, s)
    res = log_likelihood(gaussian_score_fn(sde, m, s), sde, x, rtol=1e-8, atol=1e-8)
    assert torch.allclose(res.z, xT, rtol=0, atol=1e-6)
    assert (res.log_p - truth).abs().max() < 1e-6
    assert torch.allclose(res.prior_logp, sde.prior_logp(res.z))
    # at the default tolerances: well within 1e-3 nats per dimension
    res = log_likelihood(gaussian_score_fn(sde, m, s), sde, x)
    assert (res.log_p - truth).abs().max() < 1e-3 * 3


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_mixture_reference_and_exact_density(dim, name):
    sde, gm = SDES[name](), mixture(dim)
    x, _ = gm.sample(48, torch.Generator().manual_seed(dim))
    ref, z_ref = reference_log_likelihood(gm, sde, x)
    # the reference solves the ODE whose answer is the exact density up to the prior mismatch
    assert (ref - exact_mismatch_truth(gm, sde, x, z_ref)).abs().max() < 1e-6
    res = log_likelihood(gm.score_fn(sde), sde, x)
    assert res.log_p.shape == (48,) and res.nfe > 0
    assert (res.log_p - ref).abs().max() / dim < 1e-3
    assert (res.log_p - exact_mismatch_truth(gm, sde, x, res.z)).abs().max() / dim < 1e-3
    # float32 data runs in float32 and still meets the target
    res32 = log_likelihood(gm.score_fn(sde), sde, x.float())
    assert res32.log_p.dtype == torch.float32
    assert (res32.log_p.double() - ref).abs().max() / dim < 1e-3


@pytest.mark.parametrize("name", ["vp", "cosine"])
@pytest.mark.parametrize("method, order, stages", [("euler", 1, 1), ("midpoint", 2, 2), ("heun2", 2, 2),
                                                   ("heun3", 3, 3), ("rk4", 4, 4)])
def test_fixed_grid_solvers_converge_at_their_order(name, method, order, stages):
    """Gaussian data, closed-form log-likelihood: halving the step divides the error by 2^order
    (measured 0.99, 2.02, 2.02-2.04, 2.97-2.98, 4.02-4.05 from 64 to 128 steps), at steps * stages NFE."""
    sde, m, s = SDES[name](), 0.7, 0.3
    torch.manual_seed(0)
    x = m + s * torch.randn(32, 3, dtype=torch.float64)
    truth, _ = gaussian_flow_truth(sde, x, m, s)
    errors = []
    for steps in (64, 128):
        res = log_likelihood(gaussian_score_fn(sde, m, s), sde, x, method=method, steps=steps)
        assert res.nfe == steps * stages
        errors.append((res.log_p - truth).abs().max().item())
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.15, errors


def test_fixed_grid_rk4_on_a_mixture_matches_the_reference():
    """2-D ring under VP, 32 rk4 steps uniform in t (128 NFE): within 1e-3 nats per dimension of the
    tight reference (measured max 3.4e-4 at 24 steps on 1000 points); the log-SNR grid is worse."""
    sde, gm = VPSDE(), mixture(2)
    x, _ = gm.sample(64, torch.Generator().manual_seed(5))
    ref, _ = reference_log_likelihood(gm, sde, x)
    errors = {schedule: (log_likelihood(gm.score_fn(sde), sde, x, method="rk4", steps=32, schedule=schedule).log_p
                         - ref).abs().max().item() for schedule in ("uniform_t", "log_snr")}
    assert errors["uniform_t"] / 2 < 1e-3 and errors["uniform_t"] < errors["log_snr"], errors


@pytest.mark.parametrize("chunked, batched", [(False, None), (True, None), (False, False)])
def test_exact_divergence_matches_closed_form(monkeypatch, chunked, batched):
    """Vmapped products (in one chunk or several) and looped ones (batched=False) alike."""
    if chunked:  # force the D vector-Jacobian products into several chunks
        monkeypatch.setattr(lik, "_EXACT_TRACE_ELEMENTS", 40 * 16 * 3)
    sde, gm = VPSDE(), mixture(16)
    x, _ = gm.sample(40, torch.Generator().manual_seed(3))
    t = torch.rand(40, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.05
    flow = lik._ProbabilityFlow(gm.score_fn(sde), sde, batched=batched)
    drift, div = flow.drift_and_divergence(x, t, None)
    truth = mixture_pf_divergence(gm, sde, x, t)
    assert torch.allclose(div, truth, rtol=1e-10, atol=1e-10)
    assert torch.allclose(drift, sde.reverse(gm.score_fn(sde), probability_flow=True).sde(x, t)[0])


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_a_model_vmap_cannot_run_falls_back_to_looped_products(monkeypatch, trace):
    """When the vmapped backward fails as on diffusers' UNet, the solve switches to one backward pass
    per cotangent after that single try and still meets the Gaussian closed form."""
    calls = []

    def vmap_fails(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("NYI: querying is_contiguous inside of vmap for memory_format other than "
                           "torch.contiguous_format")

    monkeypatch.setattr(lik, "_batched_vjps", vmap_fails)
    sde, m, s = VPSDE(), 0.7, 0.3
    x = m + s * torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    truth, _ = gaussian_flow_truth(sde, x, m, s)
    res = log_likelihood(gaussian_score_fn(sde, m, s), sde, x, rtol=1e-8, atol=1e-8, trace=trace,
                         generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1 and res.nfe > 10
    # the Gaussian flow's Jacobian is a multiple of I, so Hutchinson with Rademacher probes is exact too
    assert (res.log_p - truth).abs().max() < 1e-6


def test_other_errors_under_vmap_are_not_swallowed():
    def broken(x, t):
        raise RuntimeError("the model is broken")

    flow = lik._ProbabilityFlow(broken, VPSDE())
    with pytest.raises(RuntimeError, match="the model is broken"):
        flow.drift_and_divergence(torch.zeros(2, 2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64), None)


def test_channels_last_unet_takes_the_looped_path_with_the_same_result():
    """The same U-Net in contiguous (vmapped products) and channels_last (vmap fails: looped)
    memory formats gives the same divergence and log-likelihood."""
    from scoresde.models import ScoreModel, build_model

    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, image_size=4, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(), dropout=0.0).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    model = ScoreModel(net, VPSDE())
    x = 0.5 * torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.1, 0.6], dtype=torch.float64)
    flat = lik._ProbabilityFlow(model.score_fn(), model.sde)
    _, div = flat.drift_and_divergence(x, t, None)
    ref = log_likelihood(model.score_fn(), model.sde, x, method="rk4", steps=2)
    model = model.to(memory_format=torch.channels_last)
    cl = lik._ProbabilityFlow(model.score_fn(), model.sde)
    _, div_cl = cl.drift_and_divergence(x, t, None)
    assert flat.batched is True and cl.batched is False
    assert torch.allclose(div_cl, div, rtol=1e-10, atol=0)
    res = log_likelihood(model.score_fn(), model.sde, x, method="rk4", steps=2)
    assert torch.allclose(res.log_p, ref.log_p, rtol=1e-10, atol=0)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_on_correlated_jacobian(probes):
    """Copies of one point each get their own fixed probe: independent estimates of the exact value.

    Between two modes of the ring the score's Jacobian has large off-diagonal entries
    (sum_k r_k a_k a_k^T - s s^T), so even Rademacher probes have variance there.
    """
    sde, gm = VPSDE(), mixture(2)
    point = torch.tensor([[2.0, 2.0 * math.tan(math.pi / 8)]], dtype=torch.float64)  # between modes 0 and 1
    exact = log_likelihood(gm.score_fn(sde), sde, point, rtol=1e-8, atol=1e-8).log_p
    n = 400
    est = log_likelihood(gm.score_fn(sde), sde, point.expand(n, 2).clone(), rtol=1e-8, atol=1e-8,
                         trace="hutchinson", probes=probes, generator=torch.Generator().manual_seed(5)).log_p
    se = est.std() / math.sqrt(n)
    assert est.std() > 0.05  # the estimator is genuinely random here, so the check below has teeth
    assert (est.mean() - exact).abs() < 4 * se
    # averaging n_probes probes divides the variance by n_probes
    est4 = log_likelihood(gm.score_fn(sde), sde, point.expand(n, 2).clone(), rtol=1e-8, atol=1e-8,
                          trace="hutchinson", probes=probes, n_probes=4,
                          generator=torch.Generator().manual_seed(6)).log_p
    assert (est4.mean() - exact).abs() < 4 * est4.std() / math.sqrt(n)
    assert 0.5 < (est.var() / est4.var()) / 4 < 2.0


def test_one_hard_sample_does_not_spoil_the_others():
    """With one shared step size, the per-sample error norm keeps every sample within tolerance.

    (torchdiffeq's default RMS norm over the batch gives a max error of 1.4e-2 nats on this batch at
    tol 1e-4; the per-sample norm 7e-4.)
    """
    sde, gm = VPSDE(), mixture(2)
    x, _ = gm.sample(256, torch.Generator().manual_seed(1))
    x[0] = 0.0                                                     # the ring's centre
    x[1] = torch.tensor([9.0, -7.0], dtype=torch.float64)         # far outside the data
    ref, _ = reference_log_likelihood(gm, sde, x)
    res = log_likelihood(gm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4)
    assert (res.log_p - ref).abs().max() < 5e-3
    # and a sample's value does not depend on its batch-mates beyond the tolerance
    alone = log_likelihood(gm.score_fn(sde), sde, x[2:3], rtol=1e-4, atol=1e-4)
    assert (alone.log_p - res.log_p[2]).abs() < 5e-3


def test_gaussian_bits_per_dim_closed_form():
    """E_u of the dequantized bound for a Gaussian model, in closed form, for two data scalings.

    For N(m, s^2) data the ODE's log-likelihood is quadratic in x (x_T = A + B x per dim), and for
    x uniform on a bin of width w around c, E[x_T^2] = (A + B c)^2 + B^2 w^2 / 12. Each copy of v
    in the batch gets its own u, so the batch mean estimates this expectation.
    """
    sde, levels, n = VPSDE(), 17, 2000
    v = torch.tensor([[3, 8, 16, 0]]).expand(n, 4)
    for lo, hi in [(-1.0, 1.0), (0.0, 1.0)]:
        m, s = lo + 0.6 * (hi - lo), 0.3 * (hi - lo)  # the same model in either scaling
        w = (hi - lo) / levels
        c = lo + (v[0].double() + 0.5) * w
        t_eps, t_T = torch.full((1,), EPS, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        a0, aT = sde.alpha(t_eps), sde.alpha(t_T)
        v0, vT = a0 ** 2 * s ** 2 + sde.sigma(t_eps) ** 2, aT ** 2 * s ** 2 + sde.sigma(t_T) ** 2
        B = torch.sqrt(vT / v0)
        A = aT * m - B * a0 * m
        ex_T2 = (A + B * c) ** 2 + B ** 2 * w ** 2 / 12
        D = 4
        expected_logp = -0.5 * D * math.log(2 * math.pi) - 0.5 * ex_T2.sum() + 0.5 * D * torch.log(vT / v0)
        expected = -(expected_logp + D * math.log(w)) / (D * math.log(2))
        res = bits_per_dim(gaussian_score_fn(sde, m, s), sde, v, levels=levels, data_range=(lo, hi),
                           dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        assert res.bpd_draws.shape == (1, n) and res.nfe > 0
        se = res.bpd.std() / math.sqrt(n)
        assert (res.bpd.mean() - expected).abs() < 4 * se + 1e-5


def test_bits_per_dim_draws_average():
    sde, levels = VPSDE(), 17
    v = torch.randint(0, levels, (6, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    res = bits_per_dim(gaussian_score_fn(sde, 0.0, 0.5), sde, v, levels=levels, n_draws=3,
                       generator=torch.Generator().manual_seed(1))
    assert res.bpd_draws.shape == (3, 6)
    assert torch.allclose(res.bpd, res.bpd_draws.mean(0))
    assert not torch.allclose(res.bpd_draws[0], res.bpd_draws[1])  # fresh u per draw


def test_bad_input_is_reported():
    sde, gm = VPSDE(), mixture(2)
    score = gm.score_fn(sde)
    x, _ = gm.sample(4, torch.Generator().manual_seed(0))
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite entries in samples \[2\]"):
        log_likelihood(score, sde, bad)
    with pytest.raises(ValueError, match="cannot take x of shape"):
        log_likelihood(score, sde, torch.zeros(4, 3, dtype=torch.float64))
    for kw in ({"rtol": 0.0}, {"atol": -1e-5}, {"rtol": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            log_likelihood(score, sde, x, **kw)
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(score, sde, x, eps=1.0)
    with pytest.raises(ValueError, match=r"method='rk45' is not allowed: use an adaptive torchdiffeq solver.*"
                                         r"or a fixed-grid one with steps"):
        log_likelihood(score, sde, x, method="rk45")
    with pytest.raises(ValueError, match="method='rk4' is a fixed-grid solver and needs steps"):
        log_likelihood(score, sde, x, method="rk4")
    with pytest.raises(ValueError, match="steps=8 is not allowed with the adaptive method='dopri5'"):
        log_likelihood(score, sde, x, steps=8)
    for steps in (0, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="steps"):
            log_likelihood(score, sde, x, method="rk4", steps=steps)
    with pytest.raises(ValueError, match="steps=4 is too many for torch.float32"):
        log_likelihood(score, sde, x.float(), method="rk4", steps=4, eps=1 - 1e-7)
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(score, sde, x, trace="hutchinson-skilling")
    with pytest.raises(ValueError, match="probes"):
        log_likelihood(score, sde, x, trace="hutchinson", probes="sphere")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(score, sde, x, trace="hutchinson", n_probes=0)
    with pytest.raises(TypeError, match="floating-point"):
        log_likelihood(score, sde, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shaped like x"):
        log_likelihood(lambda y, t: y[:, :1], sde, x)
    with pytest.raises(FloatingPointError, match="not finite"):
        log_likelihood(lambda y, t: torch.where((t > 0.3)[:, None], float("nan"), -y), sde, x)
    v = torch.randint(0, 17, (4, 2))
    with pytest.raises(ValueError, match="outside"):
        bits_per_dim(score, sde, v + 17, levels=17)
    with pytest.raises(TypeError, match="integer tensor"):
        bits_per_dim(score, sde, v.double(), levels=17)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(score, sde, v, levels=17, data_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="levels"):
        bits_per_dim(score, sde, v, levels=1)


def test_data_of_the_wrong_shape_for_a_trained_network_is_reported():
    """A network built for 2-D data, given 3-D or image-shaped data: one clear error, before any solve."""
    from scoresde.models import ScoreModel
    from scoresde.models.mlp import ScoreMLP

    model = ScoreModel(ScoreMLP(dim=2, hidden=16, depth=1), VPSDE())
    for shape in ((4, 3), (4, 1, 2)):
        with pytest.raises(ValueError, match=r"cannot take x of shape .*expect another data shape"):
            log_likelihood(model.score_fn(), model.sde, torch.zeros(shape))
