"""Float32 at the extremes (issue #6): times near t = 0 (down to the smallest allowed eps, 1e-6) and
VE's largest noise levels (sigma_max = 50, 378 as for CIFAR-10, and 1e4).

Truths compared against: the closed-form kernels written out here in float64 with `math`; the
log-SNR inverse measured in log-SNR space (float32 cannot resolve t better than one ulp of lambda
divided by |d lambda / dt|); and Gaussian data N(0, s0^2 I), whose perturbed marginals are
N(0, (alpha(t)^2 s0^2 + sigma(t)^2) I) for every kernel SDE, so its score and log-density are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, CosineVPSDE, SubVPSDE, log_likelihood, sample
from scoresde.sdes.learned import LearnedSDE

SMALL_TIMES = [1e-6, 1e-5, 1e-4, 1e-3]
S0 = 0.5  # data std of the Gaussian truth


def _sdes():
    torch.manual_seed(0)
    return {"vp": VPSDE(), "subvp": SubVPSDE(), "cosine": CosineVPSDE(), "ve50": VESDE(sigma_max=50.0),
            "ve378": VESDE(sigma_max=378.0), "ve1e4": VESDE(sigma_max=1e4), "learned": LearnedSDE(n_features=16)}


SDES = _sdes()


def _closed_form(name: str, sde, t: float) -> tuple[float, float]:
    """(alpha(t), sigma(t)) from the papers' formulas, in float64."""
    if name in ("vp", "subvp"):
        log_alpha = -0.25 * t ** 2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
        a2 = math.exp(2 * log_alpha)
        return math.sqrt(a2), (math.sqrt(-math.expm1(2 * log_alpha)) if name == "vp" else -math.expm1(2 * log_alpha))
    if name == "cosine":
        # alpha^2 = cos^2(theta(t)) / cos^2(theta(0)), theta(t) = pi/2 (t + s)/(1 + s) (Nichol & Dhariwal
        # eq. 17); 1 - alpha^2 = sin(theta + theta0) sin(theta - theta0) / cos^2 theta0 without cancellation
        th = lambda u: math.pi / 2 * (u + sde.s) / (1 + sde.s)  # noqa: E731
        alpha = math.cos(th(t)) / math.cos(th(0))
        one_minus_a2 = math.sin(th(t) + th(0)) * math.sin(th(t) - th(0)) / math.cos(th(0)) ** 2
        return alpha, math.sqrt(one_minus_a2)
    if name.startswith("ve"):
        return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    raise KeyError(name)


@pytest.mark.parametrize("name", [n for n in SDES if n != "learned"])
@pytest.mark.parametrize("t", SMALL_TIMES + [0.5, 1.0])
def test_kernel_in_float32_matches_the_closed_form(name, t):
    sde = SDES[name]
    t = min(t, sde.T)
    tt = torch.tensor([t], dtype=torch.float32)
    alpha, sigma = _closed_form(name, sde, t)
    x0 = torch.ones(1, 3)
    mean, std = sde.marginal_prob(x0, tt)
    assert mean.dtype == std.dtype == torch.float32
    assert float(mean[0, 0]) == pytest.approx(alpha, rel=1e-5)
    # float32 t carries a relative error of 6e-8, which sigma inherits with the factor d log sigma / d log t (<= ~1 here)
    assert float(std[0]) == pytest.approx(sigma, rel=2e-5)
    lam = float(sde.log_snr(tt))
    assert lam == pytest.approx(math.log(alpha / sigma), rel=1e-5, abs=1e-5)
    drift, diffusion = sde.sde(x0, tt)
    assert bool(torch.isfinite(drift).all()) and bool(torch.isfinite(diffusion).all()) and float(diffusion[0]) > 0


def test_cosine_sigma_near_zero_has_no_cancellation():
    """Regression: log cos(theta) - log cos(theta0) in float32 gave sigma(1e-8) = 1.8e-4 (true 2.0e-5)."""
    sde = SDES["cosine"]
    for t in (1e-8, 1e-7, 1e-6):
        _, sigma = _closed_form("cosine", sde, t)
        assert float(sde.sigma(torch.tensor([t], dtype=torch.float32))) == pytest.approx(sigma, rel=1e-4)


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_round_trip_in_float32(name):
    """t -> lambda(t) -> t_of_log_snr(lambda) returns t up to float32's resolution of lambda: the
    round trip's error, measured in lambda (in float64), is a few ulps of lambda."""
    sde = SDES[name]
    t = torch.tensor(SMALL_TIMES + [0.25, 0.5, sde.T], dtype=torch.float32).clamp(max=sde.T)
    lam = sde.log_snr(t)
    back = sde.t_of_log_snr(lam)
    assert back.dtype == torch.float32 and bool(torch.isfinite(back).all()) and bool((back > 0).all())
    with torch.no_grad():
        err = (sde.log_snr(back.double()) - sde.log_snr(t.double())).abs()
    ulp = torch.finfo(torch.float32).eps * lam.double().abs().clamp(min=1)
    assert bool((err <= 4 * ulp).all()), (err / ulp).tolist()


@pytest.mark.parametrize("name", list(SDES))
def test_prior_in_float32_is_finite_and_exact(name):
    """prior_logp of prior draws is the Gaussian log-density, finite even for VE's sigma_max = 1e4
    in 3072 dimensions (a CIFAR-10 image)."""
    sde = SDES[name]
    z = sde.prior_sampling((4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    logp = sde.prior_logp(z)
    assert z.dtype == logp.dtype == torch.float32 and bool(torch.isfinite(logp).all())
    s = sde.prior_std
    d = z[0].numel()
    truth = -0.5 * d * math.log(2 * math.pi * s * s) - (z.double().flatten(1) ** 2).sum(1) / (2 * s * s)
    assert torch.allclose(logp.double(), truth, rtol=1e-5)


def _gaussian_score(sde):
    def score(x, t):
        var = sde.alpha(t) ** 2 * S0 ** 2 + sde.sigma(t) ** 2
        return -x / var[:, None]
    return score


# methods that reach the data std to 5% in these steps; the others are only required to stay finite
# (annealed Langevin's eps_lr must stay below 4 sigma(eps)^2, 4e-6 for VP at eps = 1e-5)
ACCURATE = {"euler_maruyama": {"steps": 200}, "dpmpp_3m": {"steps": 20}, "unipc": {"steps": 20},
            "ode": {"rtol": 1e-4, "atol": 1e-4}}
FINITE_ONLY = {"ddim": {"steps": 10}, "pc": {"steps": 50}, "ancestral": {"steps": 50},
               "torchsde": {"steps": 20}, "annealed_langevin": {"steps": 5, "n_steps_each": 10, "eps_lr": 1e-7},
               "dpmpp_2m": {"steps": 10}, "reverse_diffusion": {"steps": 50}}


@pytest.mark.parametrize("name", ["ve378", "ve1e4", "vp", "cosine"])
@pytest.mark.parametrize("method", sorted({**ACCURATE, **FINITE_ONLY}))
def test_sampling_in_float32_at_eps_1e5(name, method):
    sde = SDES[name]
    kwargs = {**ACCURATE, **FINITE_ONLY}.get(method)
    if kwargs is None:
        pytest.skip(f"{method} is not a built-in sampler in this build")
    x = sample(_gaussian_score(sde), sde, (1000, 2), method=method, eps=1e-5,
               generator=torch.Generator().manual_seed(0), **kwargs)
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    if method in ACCURATE:
        assert float(x.std()) == pytest.approx(S0, rel=0.05)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_log_likelihood_in_float32_matches_the_gaussian(name, eps):
    """log p_eps(x) = log N(x; 0, (alpha(eps)^2 s0^2 + sigma(eps)^2) I), to 1e-2 nats, in float32."""
    sde = SDES[name]
    x = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]], dtype=torch.float32)
    res = log_likelihood(_gaussian_score(sde), sde, x, eps=eps, rtol=1e-5, atol=1e-5)
    assert res.log_p.dtype == torch.float32 and bool(torch.isfinite(res.log_p).all())
    te = torch.tensor([eps], dtype=torch.float64)
    with torch.no_grad():
        var = float(sde.alpha(te) ** 2 * S0 ** 2 + sde.sigma(te) ** 2)
    truth = -0.5 * (x.double() ** 2).sum(1) / var - math.log(2 * math.pi * var)
    # the prior N(0, prior_std^2) stands in for p_T; its mismatch with the exact p_T bounds the error
    assert torch.allclose(res.log_p.double(), truth, atol=1e-2), (res.log_p - truth).tolist()


@pytest.mark.parametrize("eps", [1e-7, 1e-300, 0.0])
def test_eps_below_the_float32_floor_is_refused(eps):
    with pytest.raises(ValueError, match="eps="):
        sample(_gaussian_score(SDES["vp"]), SDES["vp"], (2, 2), method="ddim", steps=2, eps=eps)
    with pytest.raises(ValueError, match="eps="):
        log_likelihood(_gaussian_score(SDES["vp"]), SDES["vp"], torch.zeros(2, 2), eps=eps)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma_max": 1e11}, "sigma_max"), ({"sigma_min": 1e-11}, "sigma_min")])
def test_ve_noise_levels_beyond_float32_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VESDE(**kwargs)


def test_vp_schedules_whose_alpha_underflows_are_refused():
    sde = VPSDE(beta_max=199.0)  # -log alpha(1) = beta_min/2 + (beta_max - beta_min)/4 = 49.8: accepted
    assert float(sde.alpha(torch.tensor([1.0]))) > 0
    with pytest.raises(ValueError, match="beta_max=201"):  # 50.3: 1/alpha(1)^2 would near float32's max
        VPSDE(beta_max=201)
    with pytest.raises(ValueError, match="T=0.99999999"):
        CosineVPSDE(T=0.99999999)
