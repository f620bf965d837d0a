"""The exact Gaussian-mixture posterior (GaussianMixture.posterior) against independent truths:

* importance sampling: prior draws weighted by the likelihood N(y; A x, s^2 I) estimate the posterior's
  mean, covariance and component weights (self-normalized; error ~ 1/sqrt(effective sample size));
* the scalar conjugate formula in 1-D: precision 1/s_k^2 + a^2/s^2, mean (m_k/s_k^2 + a y/s^2)/precision,
  weight ∝ w_k N(y; a m_k, a^2 s_k^2 + s^2);
* noise 0 on a coordinate: the known coordinate equals y and the rest follows the prior's conditional.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.analytic import GaussianMixture

MIX3 = GaussianMixture([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0], [0.0, -2.0, 0.5]], [0.8, 1.0, 0.6], [0.5, 0.3, 0.2])


def importance_moments(prior, A, y, s, n=400_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, k = prior.sample(n, g)
    logw = -0.5 * ((y[None] - x @ A.T) ** 2).sum(1) / s ** 2
    w = torch.softmax(logw, 0)
    mean = (w[:, None] * x).sum(0)
    cov = (w[:, None, None] * (x - mean)[:, :, None] * (x - mean)[:, None, :]).sum(0)
    weights = torch.zeros(len(prior.weights), dtype=x.dtype).index_add_(0, k, w)
    ess = 1 / (w ** 2).sum()
    return mean, cov, weights, ess


def test_posterior_matches_importance_sampling():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0.5, 1.0], dtype=torch.float64)
    post = MIX3.posterior(A, y, 0.7)
    mean, cov, weights, ess = importance_moments(MIX3, A, y, 0.7)
    exact_mean = (post.weights[:, None] * post.means).sum(0)
    centred = post.means - exact_mean
    exact_cov = (post.weights[:, None, None] * (post.covariances + centred[:, :, None] * centred[:, None, :])).sum(0)
    tol = 5 / ess.sqrt()  # ~5 standard errors for unit-scale quantities
    assert ess > 20_000
    assert (mean - exact_mean).abs().max() < 2 * tol * exact_cov.diagonal().max().sqrt(), (mean, exact_mean)
    assert (cov - exact_cov).abs().max() < 3 * tol * exact_cov.diagonal().max(), (cov, exact_cov)
    assert (weights - post.weights).abs().max() < tol, (weights, post.weights)
    # exact sampling reproduces the same moments
    x, _ = post.sample(200_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), exact_mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), exact_cov, atol=0.03, rtol=0)


def test_posterior_in_one_dimension_is_the_conjugate_formula():
    m, sk, w = [-3.0, 1.0, 4.0], [0.5, 1.5, 1.0], [0.2, 0.5, 0.3]
    a, y, s = 1.7, 2.0, 0.9
    post = GaussianMixture([[v] for v in m], sk, w).posterior([[a]], [y], s)
    prec = [1 / v ** 2 + a ** 2 / s ** 2 for v in sk]
    means = [(mk / v ** 2 + a * y / s ** 2) / p for mk, v, p in zip(m, sk, prec)]
    ev = [wk * math.exp(-0.5 * (y - a * mk) ** 2 / (a ** 2 * v ** 2 + s ** 2)) / math.sqrt(a ** 2 * v ** 2 + s ** 2)
          for wk, mk, v in zip(w, m, sk)]
    torch.testing.assert_close(post.means[:, 0], torch.tensor(means, dtype=torch.float64))
    torch.testing.assert_close(post.covariances[:, 0, 0], 1 / torch.tensor(prec, dtype=torch.float64))
    torch.testing.assert_close(post.weights, torch.tensor(ev, dtype=torch.float64) / sum(ev))
    # log_prob is the normalized posterior density: integrates to 1 on a fine grid
    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)[:, None]
    mass = post.log_prob(grid).exp().sum() * (grid[1, 0] - grid[0, 0])
    assert abs(mass.item() - 1) < 1e-6
    # and equals prior * likelihood / evidence at a point
    x0 = torch.tensor([[0.7]], dtype=torch.float64)
    prior = GaussianMixture([[v] for v in m], sk, w)
    log_prior = torch.logsumexp(torch.log(prior.weights) - 0.5 * ((x0 - prior.means.T) / prior.stds) ** 2
                                - torch.log(prior.stds) - 0.5 * math.log(2 * math.pi), 1)
    log_lik = -0.5 * ((y - a * 0.7) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(post.log_prob(x0), log_prior + log_lik - post.log_evidence)


def test_noise_free_mask_is_exact_conditioning():
    """Knowing x_0 = -1.41 on the 8-mode ring: components keep their y-coordinate law N(m_k1, 0.25),
    reweighted by w_k N(-1.41; m_k0, 0.25)."""
    ring = GaussianMixture.ring()
    post = ring.posterior([[1.0, 0.0]], [-1.41], 0.0)
    x, _ = post.sample(1000, torch.Generator().manual_seed(0))
    assert (x[:, 0] + 1.41).abs().max() < 1e-12  # round-off of x + K (y - A x)
    logw = -0.5 * ((-1.41 - ring.means[:, 0]) / 0.5) ** 2
    torch.testing.assert_close(post.weights, torch.softmax(logw, 0))
    torch.testing.assert_close(post.means[:, 1], ring.means[:, 1])
    torch.testing.assert_close(post.covariances[:, 1, 1], torch.full((8,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise_std > 0"):
        post.log_prob(x)


@pytest.mark.parametrize("A,y,noise,match", [
    ([[1.0, 0.0, 0.0]], [1.0, 2.0], 0.1, r"y must have shape \(M=1,\)"),
    ([[1.0, 0.0]], [1.0], 0.1, r"A must have shape \(M, D=3\)"),
    ([[1.0, 0.0, 0.0]], [1.0], -0.1, "noise_std must be a finite number >= 0"),
    ([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], [1.0, 2.0], 0.0, "full row rank"),
])
def test_bad_posterior_arguments(A, y, noise, match):
    with pytest.raises(ValueError, match=match):
        MIX3.posterior(A, y, noise)
