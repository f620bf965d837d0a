"""Inverse problems: measurement operators, likelihood guidance and RePaint against exact truths.

* For Gaussian data N(m, d^2 I) and linear A, the posterior p(x_0 | y) is Gaussian, N(mu, C)
  (GaussianMixture.posterior with one component), so the true guided score is the score of its
  perturbed law N(alpha mu, alpha^2 C + sigma^2 I). PosteriorCovarianceGuidance is exact there (both
  covariances); DPS is checked against its own definition written out by hand (x0_hat is linear).
* Operators' solve_gram against the explicit matrix of the operator (built column by column); a
  blur's by conjugate gradients, whose Gram matrix is far from a multiple of I.
* Samples against the exact mixture posterior on a small inpainting problem (tolerances from the
  noise floor: the spread of the same statistics between exact draws).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.analytic import GaussianMixture
from scoresde.metrics.points import sliced_wasserstein
from scoresde.sampling import (DPS, AveragePool, Blur, Grayscale, Inpainting, MaskOperator, MatrixOperator,
                               Measurement, PosteriorCovarianceGuidance, sample)
from scoresde.sampling.smc import gaussian_proposal, preconditioned_langevin, twisted_smc
from scoresde.sdes import VESDE, VPSDE

SDES = {"vp": VPSDE(), "ve": VESDE(sigma_max=50.0)}
D = 3
A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
Y = torch.tensor([0.5, 1.0], dtype=torch.float64)


def posterior_score(prior, post, x, t, sde):
    """Exact grad log p_t(x | y) for a one-component prior: N(alpha mu, alpha^2 C + sigma^2 I)."""
    alpha, sigma = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    cov = alpha ** 2 * post.covariances[0] + sigma ** 2 * torch.eye(prior.dim, dtype=torch.float64)
    return torch.linalg.solve(cov, (alpha[..., 0] * post.means[0] - x)[..., None])[..., 0]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("covariance,noise", [("isotropic", 0.3), ("jacobian", 0.3), ("isotropic", 0.0),
                                              ("jacobian", 0.0)])
def test_posterior_covariance_guidance_is_exact_for_gaussian_data(sde_name, covariance, noise):
    sde = SDES[sde_name]
    prior = GaussianMixture([[1.0, -2.0, 0.5]], 1.5)
    post = prior.posterior(A, Y, noise)
    term = PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(MatrixOperator(A), Y, noise),
                                       data_std=1.5, covariance=covariance)
    x = torch.randn(64, D, dtype=torch.float64) * 3
    for t in (torch.full((64,), 0.05, dtype=torch.float64), torch.full((64,), 0.9, dtype=torch.float64),
              torch.linspace(0.01, 1.0, 64, dtype=torch.float64)):  # per-sample times too
        torch.testing.assert_close(term.apply(prior.score_fn(sde))(x, t), posterior_score(prior, post, x, t, sde),
                                   rtol=1e-7, atol=1e-9)


def test_dps_is_its_definition():
    """DPS (gaussian): J^T A^T (y - A x0_hat) / s^2 with x0_hat = (x + sigma^2 (alpha m - x) / v) / alpha,
    J = (1 - sigma^2 / v) / alpha for N(m, d^2 I) data, v = alpha^2 d^2 + sigma^2; the normalized rule
    replaces 1/s^2 by 1/|y - A x0_hat|."""
    sde = SDES["vp"]
    m, d = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 1.5
    prior = GaussianMixture(m[None], d)
    x, t = torch.randn(32, D, dtype=torch.float64), torch.full((32,), 0.4, dtype=torch.float64)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    v = alpha ** 2 * d ** 2 + sigma ** 2
    x0 = (x + sigma ** 2 * (alpha * m - x) / v) / alpha
    r = Y - x0 @ A.T
    jac = (1 - sigma ** 2 / v) / alpha
    meas = Measurement(MatrixOperator(A), Y, 0.2)
    got = DPS(prior.score_fn(sde), sde, meas, scale=2.0)(x, t, None)
    torch.testing.assert_close(got, 2.0 * jac * (r @ A) / 0.04)
    got = DPS(prior.score_fn(sde), sde, meas, scale=2.0, step_rule="normalized")(x, t, None)
    torch.testing.assert_close(got, 2.0 * jac * (r @ A) / r.norm(dim=1, keepdim=True))


def operator_matrix(op, shape):
    """The matrix of a linear operator on samples of `shape`, one column per basis vector."""
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return op(basis).reshape(n, -1).T  # (M, n)


@pytest.mark.parametrize("op,shape", [
    (Grayscale(), (3, 4, 4)), (AveragePool(2), (2, 4, 4)), (Blur.gaussian(5, 1.5, dtype=torch.float64), (2, 6, 6)),
    (MaskOperator(torch.tensor([[1.0, 0.0], [1.0, 1.0]])), (1, 2, 2)),
    (MatrixOperator(A), (D,)),
])
def test_solve_gram_is_exact(op, shape):
    M = operator_matrix(op, shape)
    r = op(torch.randn(5, *shape, dtype=torch.float64))
    got = op.solve_gram(r, 0.3, torch.full((5,), 2.0, dtype=torch.float64)).reshape(5, -1)
    G = 0.3 * torch.eye(M.shape[0], dtype=torch.float64) + 2.0 * M @ M.T
    want = torch.linalg.solve(G, r.reshape(5, -1).T).T
    if isinstance(op, MaskOperator):  # rows of unobserved entries are zero in A; their residuals are 0
        observed = M.abs().sum(1) > 0
        want, got = want[:, observed], got[:, observed]
    torch.testing.assert_close(got, want)


def test_blur_is_a_normalized_convolution():
    blur = Blur.gaussian(5, 1.0, dtype=torch.float64)
    assert abs(blur.kernel.sum().item() - 1) < 1e-12
    flat = torch.ones(1, 2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(blur(flat)[..., 2:-2, 2:-2], flat[..., 2:-2, 2:-2])  # interior of a constant
    M = operator_matrix(blur, (1, 7, 7))
    torch.testing.assert_close(M, M.T)  # symmetric kernel, zero padding: A = A^T


RING = GaussianMixture.ring()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_repaint_inpaints_the_ring_like_the_exact_posterior(sde_name):
    """Ring, x_0 = -1.41 known, noise 0. Truth: GaussianMixture.posterior (4 modes at y = ±2.83, ±4).
    The noise floor SW2 between two exact sets of 1000 is ~0.25-0.45 here (mode weights fluctuate by
    ~0.015 for modes 7 apart); RePaint must be within 2x of the floor of this seed pair (0.38)."""
    sde = SDES[sde_name]
    n = 1000
    post = RING.posterior([[1.0, 0.0]], [-1.41], 0.0)
    truth, _ = post.sample(n, torch.Generator().manual_seed(1))
    floor, _ = post.sample(n, torch.Generator().manual_seed(2))
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = -1.41
    x = sample(RING.score_fn(sde), sde, (n, 2), method="repaint", steps=20, resample=5,
               guidance=Inpainting(known, torch.tensor([1.0, 0.0]), sde), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], known[:, 0].to(x))
    proj = torch.Generator().manual_seed(3)
    sw_floor = sliced_wasserstein(floor, truth, generator=proj)
    sw = sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(3))
    assert sw < 2 * sw_floor, (sw, sw_floor)
    assert (x[:, 1].abs() < 1).double().mean() < 0.005  # exact mass there: 1.3e-4


def test_bad_inverse_inputs():
    with pytest.raises(ValueError, match=r"A has shape \(2, 3\) but x of shape \(4, 2\)"):
        MatrixOperator(A)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast"):
        MaskOperator(torch.ones(3))(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="mask must be a bool or floating-point tensor"):
        MaskOperator(torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask must contain only 0"):
        MaskOperator(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        Measurement(MatrixOperator(A), Y, -0.1)
    meas = Measurement(MatrixOperator(A), torch.zeros(3, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match=r"y has shape \(3,\) but A\(x\) has shape \(4, 2\)"):
        meas.residual(torch.zeros(4, D, dtype=torch.float64))
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="noise_std = 0"):
        DPS(RING.score_fn(sde), sde, Measurement(MatrixOperator(A), Y, 0.0))
    with pytest.raises(ValueError, match="resample must be an integer >= 1"):
        sample(RING.score_fn(sde), sde, (4, 2), method="repaint", steps=3, resample=0,
               guidance=Inpainting(torch.zeros(4, 2), torch.tensor([1.0, 0.0]), sde))


def ring_projection(sde):
    """The ring under y = 0.6 x_0 + 0.8 x_1 + n = 1, s = 0.3: (its exact posterior, the Jacobian twist)."""
    A1, y1 = torch.tensor([[0.6, 0.8]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    twist = PosteriorCovarianceGuidance(RING.score_fn(sde), sde, Measurement(MatrixOperator(A1), y1, 0.3),
                                        covariance="jacobian")
    return RING.posterior(A1, y1, 0.3), twist


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("proposal,kernel,schedule", [("gaussian", "sde_dpmpp_2m", "log_snr"),
                                                      ("shift", "ancestral", "uniform_t")])
def test_twisted_smc_reweights_modes_that_guidance_alone_gets_wrong(proposal, kernel, schedule, sde_name):
    """Ring prior, y = 0.6 x_0 + 0.8 x_1 + n = 1, s = 0.3: the exact posterior puts weight 0.90 on the
    mode at (-2.83, 2.83) and has mean (-2.08, 2.69). Guidance alone (PiGDM, ancestral, 100 steps)
    was measured at mean (0.41, 0.98): it moves samples onto the line but keeps the prior's modes.
    TDS with 1000 particles must get the mean within 0.3 (about 4 standard errors at an effective
    sample size of 300; the posterior std is ~1.3 a coordinate)."""
    sde = SDES[sde_name]
    post, twist = ring_projection(sde)
    exact_mean = (post.weights[:, None] * post.means).sum(0)
    x, info = twisted_smc(twist, sde, (1000, 2), steps=30, proposal=proposal, kernel=kernel, schedule=schedule,
                          generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == 31
    assert (x.mean(0) - exact_mean).abs().max() < 0.3, (x.mean(0), exact_mean)


def nearest_component(x, post):
    """Index of the posterior component of highest weighted density at each sample."""
    d = torch.stack([torch.distributions.MultivariateNormal(m, c).log_prob(x) for m, c in
                     zip(post.means, post.covariances)], 1) + post.weights.clamp_min(1e-300).log()
    return d.argmax(1)


def test_twisted_smc_samples_the_exact_posterior():
    """Ring, y = 0.6 x_0 + 0.8 x_1 + n = 1, s = 0.3, 1000 particles, 40 steps (default proposal, kernel
    and grid). Truth: GaussianMixture.posterior, weights 0.067, 0.90, 0.032 on three modes. The
    shares of samples nearest each mode must be within 0.04 of the weights (3 standard errors at an
    effective sample size of 500), and the samples of the main mode must have its exact mean (within
    4 standard errors at 400 effective samples) and covariance (within 25%). SW2 is not used: with
    modes 4-6 apart it is dominated by the mode shares' sampling noise (0.14-0.29 between exact sets)."""
    sde = SDES["vp"]
    post, twist = ring_projection(sde)
    x, info = twisted_smc(twist, sde, (1000, 2), steps=40, generator=torch.Generator().manual_seed(0))
    assert info["final_ess"] > 500
    nearest = nearest_component(x, post)
    shares = torch.bincount(nearest, minlength=len(post.weights)).double() / len(x)
    assert (shares - post.weights).abs().max() < 0.04, (shares, post.weights)
    main = int(post.weights.argmax())
    xm, cov = x[nearest == main], post.covariances[main]
    error = (xm.mean(0) - post.means[main]).abs()
    assert (error < 4 * (cov.diagonal() / 400).sqrt()).all(), (xm.mean(0), post.means[main])
    assert ((torch.cov(xm.T) - cov).abs() < 0.25 * cov.diagonal().max()).all(), (torch.cov(xm.T), cov)


def test_gaussian_proposal_is_the_exact_product_of_gaussians():
    """q ∝ N(x'; m, v I) N(r - H (x' - x); 0, C) has precision P = I/v + H^T C^{-1} H and mean
    P^{-1} (m / v + H^T C^{-1} (r + H x)) (dense algebra); draws must match its moments and log q its
    density up to the stated constant D/2 log(2 pi v)."""
    g = torch.Generator().manual_seed(0)
    D, M, B, v = 3, 2, 40000, 0.3
    m, x, r = (torch.randn(D, dtype=torch.float64, generator=g) for _ in range(3))
    r = r[:M]
    H = torch.randn(M, D, dtype=torch.float64, generator=g)
    L = torch.randn(M, M, dtype=torch.float64, generator=g)
    C = L @ L.T + 0.1 * torch.eye(M, dtype=torch.float64)
    P = torch.eye(D, dtype=torch.float64) / v + H.T @ torch.linalg.solve(C, H)
    cov = torch.linalg.inv(P)
    mu = cov @ (m / v + H.T @ torch.linalg.solve(C, r + H @ x))
    batch = lambda u: u.expand(B, *u.shape)  # noqa: E731
    draws, log_q = gaussian_proposal(batch(m), v, batch(x), batch(r), batch(H), batch(C), g)
    torch.testing.assert_close(draws.mean(0), mu, atol=4 * cov.diagonal().max().sqrt().item() / B ** 0.5, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.03 * cov.diagonal().max().item(), rtol=0)
    exact = torch.distributions.MultivariateNormal(mu, cov).log_prob(draws) + 0.5 * D * math.log(2 * math.pi * v)
    torch.testing.assert_close(log_q, exact)


def test_preconditioned_langevin_converges_to_the_exact_target_from_duplicates():
    """Gaussian data N(m, d^2 I), linear A: the twist is exact, so the moves' target p_t(x) p~_t(y | x) is
    p_t(x | y) = N(alpha mu, alpha^2 C_post + sigma^2 I) (GaussianMixture.posterior, one component), and
    the trapezoid rule is exact for its Gaussian log-density. 4000 copies of one point after 40 moves
    must have that mean (4 standard errors) and covariance (within 0.05 of its largest variance); a
    wrong acceptance ratio or drift shifts them (e.g. dropping the reverse proposal's density)."""
    sde, t, s = SDES["vp"], 0.05, 0.3
    prior = GaussianMixture(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), 1.5)
    post = prior.posterior(A, Y, s)
    twist = PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(MatrixOperator(A), Y, s),
                                        covariance="jacobian")
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    mean = alpha * post.means[0]
    cov = alpha ** 2 * post.covariances[0] + sigma ** 2 * torch.eye(D, dtype=torch.float64)
    n, g = 4000, torch.Generator().manual_seed(0)
    evaluate = lambda z: twist.linearization(z, torch.full((n,), t, dtype=torch.float64))  # noqa: E731
    x = (mean + torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)).expand(n, D).clone()
    state, rates = evaluate(x), []
    for _ in range(40):
        x, state, rate = preconditioned_langevin(x, state, 0.5, t, sde, evaluate, g)
        rates.append(rate)
    assert 0.3 < sum(rates) / len(rates) < 1.0, rates
    torch.testing.assert_close(x.mean(0), mean, atol=4 * cov.diagonal().max().sqrt().item() / n ** 0.5, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05 * cov.diagonal().max().item(), rtol=0)


def test_resample_move_removes_duplicates_and_keeps_the_posterior():
    """Ring, y = 0.6 x_0 + 0.8 x_1 + n = 1, s = 0.3 (exact posterior weights 0.067, 0.90, 0.032), 1000
    particles: without moves the final resampling returns duplicates (measured ~890 distinct of 1000);
    5 moves after it must leave (nearly) all distinct, with the mode shares within 0.04 of the exact
    weights and the main mode's covariance within 25%, at NFE = steps + 1 + moves."""
    sde = SDES["vp"]
    post, twist = ring_projection(sde)
    plain, _ = twisted_smc(twist, sde, (1000, 2), steps=40, generator=torch.Generator().manual_seed(0))
    x, info = twisted_smc(twist, sde, (1000, 2), steps=35, moves=5, generator=torch.Generator().manual_seed(0))
    assert info["nfe"] == 41 and 0.5 < info["acceptance"] < 1
    assert len(torch.unique(plain, dim=0)) < 950 and len(torch.unique(x, dim=0)) > 995
    nearest = nearest_component(x, post)
    shares = torch.bincount(nearest, minlength=len(post.weights)).double() / len(x)
    assert (shares - post.weights).abs().max() < 0.04, (shares, post.weights)
    main = int(post.weights.argmax())
    cov = post.covariances[main]
    assert ((torch.cov(x[nearest == main].T) - cov).abs() < 0.25 * cov.diagonal().max()).all()


def test_linearization_is_the_jacobian_twist():
    """For N(m, d^2 I) data x0_hat is linear with J = (1 - sigma^2 / w) / alpha I, w = alpha^2 d^2 + sigma^2,
    so H = A J, C = s^2 I + (sigma^2 / alpha) A J A^T and the gradient is H^T C^{-1} (y - A x0_hat)."""
    sde = SDES["vp"]
    m, d, s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 1.5, 0.3
    prior = GaussianMixture(m[None], d)
    term = PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(MatrixOperator(A), Y, s),
                                       covariance="jacobian")
    x, t = torch.randn(8, D, dtype=torch.float64), torch.full((8,), 0.4, dtype=torch.float64)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    w = alpha ** 2 * d ** 2 + sigma ** 2
    jac = ((1 - sigma ** 2 / w) / alpha)[0, 0]
    x0 = (x + sigma ** 2 * (alpha * m - x) / w) / alpha
    C = s ** 2 * torch.eye(2, dtype=torch.float64) + (sigma[0, 0] ** 2 / alpha[0, 0]) * jac * A @ A.T
    r = Y - x0 @ A.T
    log_lik, grad, got_x0, got_r, rows, cov = term.linearization(x, t)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_r, r)
    torch.testing.assert_close(rows, (jac * A).expand(8, 2, D))
    torch.testing.assert_close(cov, C.expand(8, 2, 2))
    torch.testing.assert_close(grad, torch.linalg.solve(C, r.T).T @ (jac * A))
    torch.testing.assert_close(log_lik, -0.5 * (r * torch.linalg.solve(C, r.T).T).sum(1) - 0.5 * torch.logdet(C))
    with pytest.raises(ValueError, match="linearization needs covariance='jacobian'"):
        PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(MatrixOperator(A), Y, s)).linearization(x, t)


def test_bad_twisted_smc_options():
    sde = SDES["vp"]
    _, jac = ring_projection(sde)
    meas = jac.measurement
    with pytest.raises(TypeError, match="twist must be"):
        twisted_smc(DPS(RING.score_fn(sde), sde, meas, step_rule="normalized"), sde, (10, 2), steps=3)
    with pytest.raises(ValueError, match="proposal='gaussian' needs the twist"):
        twisted_smc(DPS(RING.score_fn(sde), sde, meas), sde, (10, 2), steps=3)
    with pytest.raises(ValueError, match="kernel='euler' is not allowed"):
        twisted_smc(jac, sde, (10, 2), steps=3, kernel="euler")
    with pytest.raises(ValueError, match="proposal='mala' is not allowed"):
        twisted_smc(jac, sde, (10, 2), steps=3, proposal="mala")
    with pytest.raises(ValueError, match=r"shape=\(10,\) is not allowed"):
        twisted_smc(jac, sde, (10,), steps=3)
    with pytest.raises(ValueError, match="steps=0 is not allowed"):
        twisted_smc(jac, sde, (10, 2), steps=0)
    with pytest.raises(ValueError, match="moves=-1 is not allowed"):
        twisted_smc(jac, sde, (10, 2), steps=3, moves=-1)
    with pytest.raises(TypeError, match="moves must be an integer"):
        twisted_smc(jac, sde, (10, 2), steps=3, moves=1.5)
    with pytest.raises(ValueError, match="move_step"):
        twisted_smc(jac, sde, (10, 2), steps=3, moves=2, move_step=0.0)
    with pytest.raises(ValueError, match="moves=2 needs proposal='gaussian'"):
        twisted_smc(DPS(RING.score_fn(sde), sde, meas), sde, (10, 2), steps=3, proposal="shift", moves=2)
    x, info = twisted_smc(DPS(RING.score_fn(sde), sde, meas), sde, (10, 2), steps=3, proposal="shift")
    assert x.shape == (10, 2) and info["nfe"] == 4


@pytest.mark.parametrize("noise", [0.2, 0.0])
@pytest.mark.parametrize("op", [Grayscale(), AveragePool(2), MaskOperator(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))],
                         ids=["colorization", "super_resolution", "inpainting"])
def test_image_operators_give_the_exact_posterior_score_for_gaussian_images(op, noise):
    """(3, 2, 2) images of Gaussian data N(m, d^2 I): with the operator's matrix (built column by
    column) the posterior is Gaussian, and PiGDM with data_std = d must give its perturbed score."""
    sde = SDES["vp"]
    shape = (3, 2, 2)
    m = torch.linspace(-1, 1, 12, dtype=torch.float64)
    prior = GaussianMixture(m[None], 0.7)
    M = operator_matrix(op, shape)
    M = M[M.abs().sum(1) > 0]  # a mask's unobserved entries are zero rows: drop them
    x_true = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x_true)[0]
    post = prior.posterior(M, (M @ x_true.flatten()), noise)
    term = PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(op, y, noise), data_std=0.7)
    x = torch.randn(16, *shape, dtype=torch.float64)
    t = torch.full((16,), 0.3, dtype=torch.float64)
    got = term.apply(prior.score_fn(sde))(x, t).flatten(1)
    torch.testing.assert_close(got, posterior_score(prior, post, x.flatten(1), t, sde), rtol=1e-7, atol=1e-9)


def test_colorization_of_a_pixel_matches_the_exact_posterior_colour():
    """Colorization as a linear measurement: the prior over one RGB pixel, (3, 1, 1) images, is a
    mixture of a red, a green and a blue Gaussian (std 0.1) whose grey values are -0.13, -0.10 and 0.03;
    y = Grayscale (the channel mean) + noise, y = 0, s = 0.05. The exact posterior (GaussianMixture.posterior
    with A = [1/3 1/3 1/3]) weighs the colours by how well their grey fits y: (0.14, 0.27, 0.59), from
    the prior's equal thirds. Twisted SMC with the PiGDM twist (1000 particles, 500 steps; measured
    within 0.03 at seeds 0 and 1, 200 steps were 0.05 off) must give the weights within 0.07 (about 2.5
    standard errors at an effective sample size of 300) and the grey value's mean within 0.01 (its
    posterior std is 0.05)."""
    from scoresde.sampling.smc import twisted_smc
    sde = SDES["vp"]
    colours = torch.tensor([[0.8, -0.6, -0.6], [-0.5, 0.7, -0.5], [-0.4, -0.4, 0.9]], dtype=torch.float64)
    prior = GaussianMixture(colours, 0.1)
    grey, y = torch.full((1, 3), 1 / 3, dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    post = prior.posterior(grey, y, 0.05)
    twist = PosteriorCovarianceGuidance(prior.score_fn(sde), sde, Measurement(Grayscale(), y.reshape(1, 1, 1), 0.05),
                                        covariance="jacobian")
    x, _ = twisted_smc(twist, sde, (1000, 3, 1, 1), steps=500, generator=torch.Generator().manual_seed(0))
    x = x.flatten(1)
    share = torch.bincount(torch.cdist(x, post.means).argmin(1), minlength=3).double() / len(x)
    assert (share - post.weights).abs().max() < 0.07, (share, post.weights)
    exact_grey = float((post.weights * (post.means @ grey[0])).sum())
    assert abs(float((x @ grey[0]).mean()) - exact_grey) < 0.01, (float((x @ grey[0]).mean()), exact_grey)
