"""The samplers driven by a ScoreModel, as the command line drives them (`model.score_fn()`): the
network path (float32 times, EDM's c_in and c_noise = -log_snr / 4 and its inverse, the
parametrization's conversion to a score, the final Tweedie step) must hand the samplers the exact score.

Truth: for Gaussian data N(m, s^2 I) the probability-flow ODE keeps each sample's standardized
position, x_t = alpha_t m + sqrt(v_t) z with v_t = alpha_t^2 s^2 + sigma_t^2, so the flow map from T
to eps is x_eps = alpha_eps m + sqrt(v_eps / v_T) (x_T - alpha_T m), and Tweedie's denoising step gives
E[x_0 | x_eps] = m + alpha_eps s^2 (x_eps - alpha_eps m) / v_eps. The raw network is an oracle
(tests/oracles.py) that returns the exact prediction from the conditioning it is handed.
"""

import pytest
import torch

from oracles import ScoreAsNet
from scoresde.analytic import gaussian_score_fn
from scoresde.models import ScoreModel
from scoresde.sampling import sample
from scoresde.sdes import VESDE, VPSDE

MEAN, STD, EPS = torch.tensor([0.7, -0.3]), 0.2, 1e-3
SDES = {"vp": VPSDE(), "ve": VESDE(sigma_min=0.01, sigma_max=50.0)}


def exact_denoised_flow(sde, x_T: torch.Tensor) -> torch.Tensor:
    """The Gaussian data's flow map from T to EPS, then Tweedie's step (module docstring), in float64."""
    t = torch.tensor([sde.T, EPS], dtype=torch.float64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    v = alpha ** 2 * STD ** 2 + sigma ** 2
    m = MEAN.double()
    x_eps = alpha[1] * m + torch.sqrt(v[1] / v[0]) * (x_T.double() - alpha[0] * m)
    return m + alpha[1] * STD ** 2 * (x_eps - alpha[1] * m) / v[1]


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("parametrization", ["eps", "x0"])
@pytest.mark.parametrize("method, steps, tol", [("ode", None, 1e-4), ("unipc", 20, 2e-3)])
def test_score_model_samples_follow_the_exact_flow_map(sde_name, parametrization, method, steps, tol):
    sde = SDES[sde_name]
    net = ScoreAsNet(sde, parametrization, gaussian_score_fn(sde, MEAN, STD))
    model = ScoreModel(net, sde, parametrization).eval()
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling((500, 2), generator=g)
    x = sample(model.score_fn(), sde, method=method, steps=steps, eps=EPS, x_T=x_T, generator=g)
    assert x.dtype == torch.float32
    exact = exact_denoised_flow(sde, x_T)
    err = (x.double() - exact).norm(dim=1).max().item()
    assert err < tol * exact.norm(dim=1).max().item(), f"max error {err:.2e}"
