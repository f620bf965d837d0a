"""The ground-truth module itself, checked against quadrature, autograd and Monte Carlo."""

import pytest
import torch

from scoresde import VESDE, VPSDE, CosineVPSDE
from scoresde.analytic import GaussianMixture, gaussian_score_fn

SDES = [VPSDE(), VESDE(sigma_max=10.0), CosineVPSDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_mixture_density_integrates_to_one(sde):
    """Trapezoid quadrature of p_t on a wide 2-D grid gives 1."""
    gm = GaussianMixture([[-2.0, 0.0], [1.5, 1.0]], [0.4, 0.7], [0.3, 0.7])
    t = 0.2
    half = 6 * (1 + sde.sigma(torch.tensor([t], dtype=torch.float64)).item())
    g = torch.linspace(-half, half, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    p = gm.log_prob(pts, torch.full((pts.shape[0],), t, dtype=torch.float64), sde).exp().reshape(601, 601)
    h = (g[1] - g[0]).item()
    assert torch.trapezoid(torch.trapezoid(p, dx=h), dx=h).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_score_is_gradient_of_log_density(sde):
    gm = GaussianMixture.ring(n_modes=5, dim=3)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    t = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), t, sde), grad, rtol=1e-10, atol=1e-12)


def test_samples_have_mixture_moments():
    """Mean sum_k w_k mu_k and covariance sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T."""
    gm = GaussianMixture([[-2.0, 0.0], [1.5, 1.0]], [0.4, 0.7], [0.3, 0.7])
    x, _ = gm.sample(200_000, torch.Generator().manual_seed(0))
    m = (gm.weights[:, None] * gm.means).sum(0)
    cov = sum(w * (s ** 2 * torch.eye(2, dtype=torch.float64) + torch.outer(mu, mu))
              for w, s, mu in zip(gm.weights, gm.stds, gm.means)) - torch.outer(m, m)
    torch.testing.assert_close(x.mean(0), m, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.02, rtol=0)


def test_posterior_and_component_scores_recombine():
    """sum_k p(k|x) grad log N_k = grad log p: the identity classifier guidance relies on."""
    sde = VPSDE()
    gm = GaussianMixture.ring()
    x, _ = gm.sample(32, torch.Generator().manual_seed(3))
    t = torch.full((32,), 0.4, dtype=torch.float64)
    post = gm.log_posterior(x, t, sde).exp()
    torch.testing.assert_close(post.sum(1), torch.ones(32, dtype=torch.float64))
    combined = sum(post[:, k:k + 1] * gm.component_score(x, t, sde, k) for k in range(8))
    torch.testing.assert_close(combined, gm.score(x, t, sde))


def test_gaussian_score_matches_one_component_mixture():
    sde = VPSDE()
    gm = GaussianMixture([[0.7, 0.7]], [1.3])
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_score_fn(sde, 0.7, 1.3)(x, t), gm.score(x, t, sde))


def test_bad_mixture_parameters():
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([[0.0]], [0.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0], [1.0, -1.0])
