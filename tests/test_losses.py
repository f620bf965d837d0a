"""Losses checked against exact values.

Truths used: for data N(m, s^2 I_d) and x_t = alpha x0 + sigma eps, the best eps-predictor E[eps | x_t]
leaves E||eps_hat - eps||^2 = d rho(t),  rho = alpha^2 s^2 / (alpha^2 s^2 + sigma^2); the loss of any
predictor at time t is lambda(t)/sigma^2 ||eps_hat - eps||^2 = lambda alpha^2/sigma^4 ||x0_hat - x0||^2;
for VP, g^2 = beta(t) = 0.1 + 19.9 t and alpha^2 = exp(-(0.1 t + 9.95 t^2)); DDPM's chain has
alpha_k^2 = prod_{i<k} (1 - beta_i), beta_i = linspace(0.1/N, 20/N, N); SMLD's noise levels are
geometric from sigma_min to sigma_max; the importance density g^2/sigma^2 / Z has CDF
(lambda(eps) - lambda(t)) / (lambda(eps) - lambda(T)) in the log-SNR lambda.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from scoresde.analytic import gaussian_score_fn
from scoresde.losses import (LOSSES, chain_marginals, classifier_loss, ddpm_loss, dsm_loss, importance_density,
                             sample_t, smld_loss)
from scoresde.models import PARAMETRIZATIONS, ScoreMLP, ScoreModel
from scoresde.sdes import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from oracles import ScoreAsNet

SDES = [VPSDE(), VESDE(), CosineVPSDE(), SubVPSDE()]
M, S = 0.4, 0.6  # Gaussian data N(M, S^2 I)



def oracle(sde, parametrization="eps", mean=M, std=S):
    return ScoreModel(ScoreAsNet(sde, parametrization, gaussian_score_fn(sde, mean, std)), sde, parametrization)


def gaussian_data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return M + S * torch.randn(n, d, generator=g, dtype=torch.float64)


def rho(sde, t):
    a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
    return a2 * S ** 2 / (a2 * S ** 2 + s2)


def time_average(fn, sde, eps):
    """(1 / (T - eps)) int_eps^T fn(t) dt by the trapezoid rule on a log grid (integrands ~ 1/t at 0)."""
    t = torch.tensor(np.geomspace(eps, sde.T, 200001), dtype=torch.float64)
    return float(torch.trapezoid(fn(t), t)) / (sde.T - eps)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), CosineVPSDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_oracle_reaches_the_analytic_minimum(sde, weighting):
    """E[loss] of the exact score = (1/(T-eps)) int lambda/sigma^2 d rho dt; Monte Carlo within 4 std errors."""
    d, eps = 3, 1e-3
    lam = {"sigma2": lambda t: sde.sigma(t) ** 2, "likelihood": sde.g2}[weighting]
    truth = time_average(lambda t: lam(t) / sde.sigma(t) ** 2 * d * rho(sde, t), sde, eps)
    per = dsm_loss(oracle(sde), sde, gaussian_data(40000, d, 0), weighting=weighting, eps=eps,
                   generator=torch.Generator().manual_seed(1), reduce=False)
    se = per.std().item() / math.sqrt(per.numel())
    assert abs(per.mean().item() - truth) < 4 * se, (per.mean().item(), truth, se)


class Recorder(nn.Module):
    """Predicts eps_hat = 0 and records what the wrapper gave it."""

    def forward(self, x_in, c_noise, y=None):
        self.x_in, self.c_noise, self.y = x_in, c_noise, y
        return torch.zeros_like(x_in)


def _vp_seen(net, x0, sigma_data=0.5):
    """t, alpha^2, sigma^2, g^2 and eps recovered from what a VP network saw (closed forms, not the SDE code)."""
    lam = -4 * net.c_noise
    a2 = torch.sigmoid(2 * lam)  # alpha^2 / sigma^2 = e^{2 lambda}, alpha^2 + sigma^2 = 1
    s2 = 1 - a2
    t = (-0.1 + torch.sqrt(0.01 - 4 * 9.95 * torch.log(a2))) / (2 * 9.95)  # 0.1 t + 9.95 t^2 = -log alpha^2
    x_t = net.x_in * torch.sqrt(a2 * sigma_data ** 2 + s2)[:, None]
    eps = (x_t - a2.sqrt()[:, None] * x0) / s2.sqrt()[:, None]
    return t, a2, s2, 0.1 + 19.9 * t, eps


@pytest.mark.parametrize("weighting,t_sampling", [("sigma2", "uniform"), ("uniform", "stratified"),
                                                  ("likelihood", "antithetic"), ("likelihood", "importance")])
def test_each_weighting_value_for_a_known_case(weighting, t_sampling):
    """With eps_hat = 0 the per-sample loss is lambda(t)/sigma^2 q(t) ||eps||^2, q the importance factor."""
    sde, eps_min, net = VPSDE(), 1e-3, Recorder()
    x0 = gaussian_data(256, 2, 3)
    per = dsm_loss(ScoreModel(net, sde), sde, x0, weighting=weighting, t_sampling=t_sampling, eps=eps_min,
                   generator=torch.Generator().manual_seed(4), reduce=False)
    t, a2, s2, g2, noise = _vp_seen(net, x0)
    sq = noise.pow(2).sum(1)
    if weighting == "sigma2":
        truth = sq
    elif weighting == "uniform":
        truth = sq / s2
    elif t_sampling == "importance":  # lambda/sigma^2 / ((T - eps) p) = Z / (T - eps), Z = 2 (lambda(eps) - lambda(1))
        log_snr = lambda u: 0.5 * math.log(math.exp(-(0.1 * u + 9.95 * u * u)) / -math.expm1(-(0.1 * u + 9.95 * u * u)))
        truth = 2 * (log_snr(eps_min) - log_snr(1.0)) / (1 - eps_min) * sq
    else:
        truth = g2 / s2 * sq
    torch.testing.assert_close(per, truth, rtol=1e-7, atol=0)
    assert bool(((t > eps_min - 1e-9) & (t < 1 + 1e-9)).all())


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "uniform"])
def test_parametrizations_give_equal_losses(sde, weighting):
    """One (deliberately wrong) predictor written as eps, x0, score and v: the four losses are equal."""
    x0 = gaussian_data(64, 3, 5)
    losses = [dsm_loss(oracle(sde, p, mean=-0.2, std=1.3), sde, x0, weighting=weighting,
                       generator=torch.Generator().manual_seed(6), reduce=False) for p in PARAMETRIZATIONS]
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], rtol=1e-6, atol=1e-9)


def test_loss_is_weighted_x0_error_and_weighted_score_error():
    """lambda/sigma^2 ||eps_hat - eps||^2 = lambda alpha^2/sigma^4 ||x0_hat - x0||^2 = lambda ||s_hat - s||^2."""
    sde, x0, net = VPSDE(), gaussian_data(32, 2, 7), Recorder()
    model = ScoreModel(ScoreMLP(2, hidden=16, depth=1, embed_dim=8).double(), sde)
    nn.init.normal_(model.net.out.weight)
    seen = ScoreModel(net, sde)
    gen = lambda: torch.Generator().manual_seed(8)  # noqa: E731
    per = dsm_loss(model, sde, x0, weighting="uniform", generator=gen(), reduce=False)
    dsm_loss(seen, sde, x0, weighting="uniform", generator=gen())  # the same draws, recorded
    t, a2, s2, _, noise = _vp_seen(net, x0)
    t = t.to(x0.dtype)
    x_t = a2.sqrt()[:, None] * x0 + s2.sqrt()[:, None] * noise
    with torch.no_grad():
        x0_err = (model.x0(x_t, t) - x0).pow(2).sum(1)
        score_err = (model.score(x_t, t) + noise / s2.sqrt()[:, None]).pow(2).sum(1)
    torch.testing.assert_close(per.detach(), a2 / s2 ** 2 * x0_err, rtol=1e-5, atol=0)
    torch.testing.assert_close(per.detach(), score_err, rtol=1e-5, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_importance_density_integrates_to_one_and_matches_samples(sde):
    eps = 1e-5
    t = torch.tensor(np.geomspace(eps, sde.T, 400001), dtype=torch.float64)
    assert abs(float(torch.trapezoid(importance_density(sde, t, eps), t)) - 1.0) < 1e-6
    n = 20000
    draws, q = sample_t(sde, n, "importance", eps, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    density = importance_density(sde, draws, eps)
    torch.testing.assert_close(q * (sde.T - eps) * density, torch.ones(n, dtype=torch.float64))
    # Kolmogorov-Smirnov against the exact CDF in the log-SNR; 1.95 / sqrt(n) is the 0.1% critical value
    ends = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    cdf = (ends[0] - sde.log_snr(draws.sort().values)) / (ends[0] - ends[1])
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((cdf - ecdf).abs().max()) < 1.95 / math.sqrt(n)


def test_stratified_and_antithetic_times_cover_every_stratum():
    sde, B, eps = VPSDE(), 16, 1e-3
    for method in ("stratified", "antithetic"):
        t, q = sample_t(sde, B, method, eps, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
        u = (t - eps) / (sde.T - eps)
        assert sorted((u * B).floor().long().tolist()) == list(range(B)) and bool((q == 1).all())
    u = (sample_t(sde, B, "antithetic", eps, generator=torch.Generator().manual_seed(11), dtype=torch.float64)[0]
         - eps) / (sde.T - eps)
    gaps = torch.diff(u.sort().values)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / B))


def test_ddpm_and_smld_chains_are_the_published_ones():
    N = 1000
    betas = torch.linspace(0.1 / N, 20 / N, N, dtype=torch.float64)
    alpha, sigma = chain_marginals(VPSDE(N=N))
    torch.testing.assert_close(alpha ** 2, torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(sigma ** 2, 1 - torch.cumprod(1 - betas, 0))
    alpha, sigma = chain_marginals(VESDE(N=N))
    torch.testing.assert_close(alpha, torch.ones(N, dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor(np.geomspace(0.01, 50.0, N)))


@pytest.mark.parametrize("sde", [VPSDE(N=100), VESDE(N=100)], ids=["VP", "VE"])
def test_ddpm_and_smld_losses_of_the_oracle(sde):
    """E[ddpm_loss] = d mean_k rho_k on the chain's levels; smld_loss is half of it (lambda = sigma^2, factor 1/2)."""
    d = 2
    alpha, sigma = chain_marginals(sde)
    truth = float((d * alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)).mean())
    x0 = gaussian_data(40000, d, 12)
    for loss, factor in ((ddpm_loss, 1.0), (smld_loss, 0.5)):
        per = loss(oracle(sde), sde, x0, generator=torch.Generator().manual_seed(13), reduce=False)
        se = per.std().item() / math.sqrt(per.numel())
        assert abs(per.mean().item() - factor * truth) < 4 * se, (loss.__name__, per.mean().item(), factor * truth)


def test_classifier_loss_of_uninformative_and_bayes_classifiers():
    """Constant logits give exactly log K. For two equally likely classes N(-+2, 0.5^2), the exact posterior
    (log-odds 4 alpha x / v, v = alpha^2 / 4 + sigma^2) has expected loss E_t H(Y | X_t), with
    H(Y | X_t) = E_{x ~ N(2 alpha, v)} softplus(-4 alpha x / v) (quadrature)."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(14)
    n = 20000
    y = torch.randint(0, 2, (n,), generator=g)
    x0 = (4.0 * y - 2.0)[:, None] + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    const = classifier_loss(lambda x, t: torch.zeros(x.shape[0], 3, dtype=x.dtype), sde, x0, y % 3, generator=g,
                            reduce=False)
    torch.testing.assert_close(const, torch.full_like(const, math.log(3)))

    def bayes(x, t):
        a, v = sde.alpha(t)[:, None], sde.alpha(t)[:, None] ** 2 / 4 + sde.sigma(t)[:, None] ** 2
        return torch.cat([-(x + 2 * a) ** 2 / (2 * v), -(x - 2 * a) ** 2 / (2 * v)], 1)

    def entropy(t):
        z = torch.linspace(-8, 8, 801, dtype=torch.float64)
        a, v = sde.alpha(t)[:, None], sde.alpha(t)[:, None] ** 2 / 4 + sde.sigma(t)[:, None] ** 2
        x = 2 * a + v.sqrt() * z
        dens = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
        return torch.trapezoid(torch.nn.functional.softplus(-4 * a * x / v) * dens, z, dim=1)

    eps = 1e-5
    t = torch.linspace(eps, 1.0, 4001, dtype=torch.float64)
    truth = float(torch.trapezoid(entropy(t), t)) / (1 - eps)
    per = classifier_loss(bayes, sde, x0, y, eps=eps, generator=g, reduce=False)
    se = per.std().item() / math.sqrt(n)
    assert abs(per.mean().item() - truth) < 4 * se, (per.mean().item(), truth, se)


def test_label_dropout_uses_the_null_label():
    sde, net = VPSDE(), Recorder()
    net.num_classes = 10
    model, x0 = ScoreModel(net, sde), gaussian_data(4000, 2, 15)
    y = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(16))
    dsm_loss(model, sde, x0, y, p_uncond=1.0)
    assert bool((net.y == 10).all())
    dsm_loss(model, sde, x0, y, p_uncond=0.2, generator=torch.Generator().manual_seed(17))
    dropped = (net.y == 10).double().mean().item()
    assert abs(dropped - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 4000)
    assert bool((net.y[net.y != 10] == y[net.y != 10]).all())


@pytest.mark.parametrize("kwargs,match", [
    (dict(weighting="sigma"), "unknown weighting 'sigma'"),
    (dict(t_sampling="sobol"), "unknown t_sampling 'sobol'"),
    (dict(eps=0.0), "eps=0.0"),
    (dict(eps=1.5), "eps=1.5"),
    (dict(p_uncond=1.5), r"p_uncond=1.5 is not allowed"),
    (dict(p_uncond=0.1), "needs class labels"),
])
def test_bad_loss_options_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dsm_loss(ScoreModel(ScoreMLP(2), VPSDE()), VPSDE(), torch.randn(4, 2), **kwargs)


def test_bad_data_shape_is_a_value_error():
    with pytest.raises(ValueError, match="x0 must be a floating tensor"):
        dsm_loss(ScoreModel(ScoreMLP(2), VPSDE()), VPSDE(), torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        dsm_loss(ScoreModel(ScoreMLP(2), VPSDE()), VPSDE(), torch.randn(4, 3))
    assert set(LOSSES.names()) >= {"dsm", "ddpm", "smld"}


@pytest.mark.parametrize("sde,parametrization", [(VPSDE(), "eps"), (VESDE(), "x0")], ids=["VP-eps", "VE-x0"])
def test_trained_mlp_approaches_the_analytic_score(sde, parametrization):
    """ScoreMLP + dsm_loss on 2-D Gaussian data N((1, -0.5), diag(0.5^2, 1.5^2)) for 400 Adam steps. The
    relative error in noise units, E||sigma (s - s*)||^2 / E||sigma s*||^2 over t ~ U[0.05, 1] with s* the
    exact score (alpha m - x) / (alpha^2 std^2 + sigma^2), is 1 untrained (zero output: s = 0 for eps) and
    must fall below 5% (measured: 0.8% for both)."""
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])
    model = ScoreModel(ScoreMLP(2, hidden=64, depth=2, embed_dim=32), sde, parametrization)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(18)
    for _ in range(400):
        x0 = mean + std * torch.randn(256, 2, generator=g)
        loss = dsm_loss(model, sde, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = torch.rand(4000, generator=g) * 0.95 + 0.05
    x0 = mean + std * torch.randn(4000, 2, generator=g)
    a, sg = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x_t = a * x0 + sg * torch.randn(4000, 2, generator=g)
    exact = (a * mean - x_t) / (a ** 2 * std ** 2 + sg ** 2)
    with torch.no_grad():
        rel = (((model.score(x_t, t) - exact) * sg).pow(2).sum(1).mean() / (exact * sg).pow(2).sum(1).mean()).item()
    assert rel < 0.05, rel
