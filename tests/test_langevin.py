"""Annealed Langevin's stability bound against the exact dynamics on a point mass.

Truth used: for data at a single point, p_t = N(0, sigma(t)^2) up to the mean alpha * 0, so one update
x <- x + (step/2) score + sqrt(step) z with score = -x / sigma^2 multiplies the mean deviation by
1 - r/2, r = step / sigma^2 = eps_lr / sigma_L^2 at every level: r < 4 converges, r >= 4 diverges.
"""

import math

import pytest
import torch

from scoresde.analytic import gaussian_score_fn
from scoresde.sampling import sample
from scoresde.sdes import VESDE, VPSDE
from scoresde.sdes.learned import LearnedSDE


def _final_spread(sde, eps_lr, eps=1e-3):
    x = sample(gaussian_score_fn(sde, 0.0, 0.0), sde, (256, 4), method="annealed_langevin", steps=5, eps=eps,
               n_steps_each=20, eps_lr=eps_lr, denoise=False, generator=torch.Generator().manual_seed(0))
    return x.std().item()


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=50.0), VPSDE()], ids=["ve", "vp"])
def test_step_ratio_below_four_converges_to_the_smallest_level(sde):
    sigma_L = float(sde.sigma(torch.tensor(1e-3)))
    spread = _final_spread(sde, eps_lr=1.0 * sigma_L ** 2)
    # The stationary law of the last level's chain is N(0, sigma_L^2 / (1 - r/4)) = N(0, 4/3 sigma_L^2).
    assert spread == pytest.approx(sigma_L * math.sqrt(4 / 3), rel=0.1)


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=50.0), VPSDE()], ids=["ve", "vp"])
def test_step_ratio_of_four_or_more_is_refused_with_the_bound(sde):
    sigma_L = float(sde.sigma(torch.tensor(1e-3)))
    with pytest.raises(ValueError, match=r"eps_lr=.*sigma_L\^2"):
        _final_spread(sde, eps_lr=4.5 * sigma_L ** 2)


def test_vdm_schedule_with_tiny_sigma_min_is_refused_at_ncsn_defaults():
    sde = LearnedSDE(gamma_min=-13.3, gamma_max=5.0)
    with pytest.raises(ValueError, match="eps_lr=2e-05"):
        sample(lambda x, t: -x, sde, (8, 2), method="annealed_langevin", eps=1e-5,
               generator=torch.Generator().manual_seed(0))
