"""Sample metrics against their closed forms for Gaussians."""

import math

import pytest
import torch

from scoresde.metrics import frechet_distance, mmd, sliced_wasserstein


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_of_a_translation():
    """Translating by mu: W2 on direction theta is |theta.mu|, so SW2^2 = E (theta.mu)^2 = |mu|^2 / D."""
    x = torch.randn(4000, 4, generator=_gen(0), dtype=torch.float64)
    mu = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + mu, n_projections=4000, generator=_gen(1))
    assert sw == pytest.approx(5.0 / math.sqrt(4), rel=0.03)


def test_sliced_wasserstein_unequal_sizes_and_noise_floor():
    x = torch.randn(3000, 2, generator=_gen(0))
    y = torch.randn(2000, 2, generator=_gen(1))
    assert sliced_wasserstein(x, y, generator=_gen(2)) < 0.06
    assert sliced_wasserstein(x, 2 * y, generator=_gen(2)) > 0.5  # std 1 vs 2: W2 = 1 on every direction


def test_mmd_separates_and_is_unbiased():
    x = torch.randn(1500, 2, generator=_gen(0))
    y = torch.randn(1500, 2, generator=_gen(1))
    same = mmd(x, y)
    assert abs(same) < 2e-3          # unbiased: fluctuates around 0
    assert mmd(x, y + 0.5) > 20 * max(abs(same), 1e-4)


def test_frechet_distance_of_gaussians():
    """FD(N(0, I), N(mu, 4 I)) = |mu|^2 + tr(I + 4I - 2 * 2I) = |mu|^2 + D."""
    x = torch.randn(50_000, 3, generator=_gen(0), dtype=torch.float64)
    y = 2 * torch.randn(50_000, 3, generator=_gen(1), dtype=torch.float64) + torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(x, y) == pytest.approx(5.0 + 3.0, rel=0.02)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
