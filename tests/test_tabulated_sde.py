"""TabulatedVPSDE against its definition and against the continuous VP SDE.

Truths: DDPM's alpha-bar table (Ho et al. 2020: betas linear from 1e-4 to 0.02, abar_k =
prod (1 - beta_i)) at the knots t_k = (k + 1)/N; the VP SDE's closed forms (beta(t), alpha(t)),
which a table sampled from them must reproduce between the knots (the cosine schedule's too, to
the interpolation's accuracy); and the kernel-SDE identities
f = d log alpha/dt, g^2 = d sigma^2/dt - 2 f sigma^2 (autograd through alpha and sigma).
"""

from __future__ import annotations

import pytest
import torch

from scoresde.sdes import VPSDE, CosineVPSDE, KernelSDE, TabulatedVPSDE


def ddpm_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)


def test_knots_are_the_table():
    abar = ddpm_alphas_cumprod()
    sde = TabulatedVPSDE(abar)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    assert torch.allclose(sde.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    assert torch.allclose(sde.sigma(t) ** 2, 1 - abar, rtol=1e-10, atol=0)
    assert float(sde.alpha(torch.tensor([1e-9], dtype=torch.float64))) == pytest.approx(1.0, abs=1e-9)


def test_table_of_the_vp_sde_gives_back_the_vp_sde():
    """A table of VPSDE's alpha^2 at the knots: alpha, sigma, beta and lambda between them follow the
    closed forms, to rounding (L(t) is quadratic, which the centred slopes make the cubic exact for)."""
    vp, n = VPSDE(), 1000
    knots = (torch.arange(n, dtype=torch.float64) + 1) / n
    sde = TabulatedVPSDE(vp.alpha(knots) ** 2)
    t = torch.rand(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (1 - 1e-6) + 1e-6
    assert torch.allclose(sde.alpha(t), vp.alpha(t), rtol=1e-12, atol=0)
    assert torch.allclose(sde.sigma(t), vp.sigma(t), rtol=1e-10, atol=0)
    assert torch.allclose(sde.g2(t), vp.beta(t), rtol=1e-9, atol=0)
    assert torch.allclose(sde.f(t), -vp.beta(t) / 2, rtol=1e-9, atol=0)
    assert torch.allclose(sde.log_snr(t), vp.log_snr(t), rtol=0, atol=1e-10)


def test_table_of_the_cosine_schedule_follows_it_between_knots():
    """The cosine schedule (not polynomial in t) on the grid t_k = T (k + 1)/N: the cubic's error
    is largest near T, where alpha -> 0 bends L most (measured: 1.4e-4 in alpha, 5e-3 in beta)."""
    cos, n = CosineVPSDE(), 1000
    knots = (torch.arange(n, dtype=torch.float64) + 1) / n
    sde = TabulatedVPSDE(cos.alpha(cos.T * knots) ** 2)
    t = torch.rand(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (1 - 1e-6) + 1e-6
    assert torch.allclose(sde.alpha(t), cos.alpha(cos.T * t), rtol=5e-4, atol=0)
    assert torch.allclose(sde.sigma(t), cos.sigma(cos.T * t), rtol=1e-5, atol=0)
    assert torch.allclose(sde.g2(t), cos.T * cos.g2(cos.T * t), rtol=2e-2, atol=0)


def test_drift_and_diffusion_follow_the_kernel():
    sde = TabulatedVPSDE(ddpm_alphas_cumprod())
    t = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.999 + 1e-3
    assert torch.allclose(sde.f(t), KernelSDE.f(sde, t), rtol=1e-9, atol=1e-12)
    assert torch.allclose(sde.g2(t), KernelSDE.g2(sde, t), rtol=1e-8, atol=1e-12)
    assert bool((sde.g2(t) > 0).all())


def test_log_snr_is_strictly_decreasing_and_inverted():
    sde = TabulatedVPSDE(ddpm_alphas_cumprod())
    t = torch.linspace(1e-5, 1.0, 100_001, dtype=torch.float64)
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(sde.t_of_log_snr(lam[::97]), t[::97], rtol=1e-9, atol=0)


@pytest.mark.parametrize("table, match", [
    ([0.9, 0.95, 0.5], "strictly decreasing"),
    ([1.0, 0.9, 0.5], r"values in \(0, 1\)"),
    ([0.9, 0.5, 0.0], r"values in \(0, 1\)"),
    ([0.9], "at least 2 steps"),
    ([0.9, 1e-60], "too small"),
])
def test_bad_tables_are_refused(table, match):
    with pytest.raises(ValueError, match=match):
        TabulatedVPSDE(torch.tensor(table, dtype=torch.float64))
