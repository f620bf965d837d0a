"""Two-dimensional toy distributions, drawn fresh from a torch.Generator.

Each set is scaled to lie roughly in [-4, 4]^2 with per-coordinate std near 1-2, comparable to the
N(0, I) prior of the VP SDE. The Gaussian mixtures ("ring8", "grid25") are
`scoresde.analytic.GaussianMixture` objects, so their perturbed densities and scores are exact.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..analytic import GaussianMixture


def ring8_mixture() -> GaussianMixture:
    """8 equal Gaussians, std 0.1, on the circle of radius 2."""
    return GaussianMixture.ring(n_modes=8, radius=2.0, std=0.1)


def grid25_mixture() -> GaussianMixture:
    """25 equal Gaussians, std 0.05, on the 5 x 5 grid {-2, -1, 0, 1, 2}^2."""
    c = torch.arange(-2.0, 3.0, dtype=torch.float64)
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(means, 0.05)


def _mixture_sampler(mixture: GaussianMixture):
    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return mixture.sample(n, generator)[0].float()
    return sample


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (as sklearn.datasets.make_moons), centred and scaled by 2."""
    upper = torch.rand(n, generator=generator) < 0.5
    a = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) + noise * torch.randn(n, 2, generator=generator)
    return 2.0 * pts


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4 x 4 board covering [-2, 2]^2 (density 1/8 on each)."""
    u = torch.rand(n, 2, generator=generator)
    col = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + (col % 2)  # row + col even
    return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.25) -> torch.Tensor:
    """The 2-D swiss roll (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi], plus noise, scaled by 1/4."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * torch.randn(n, 2, generator=generator)
    return pts / 4.0


def pinwheel(n: int, generator: torch.Generator | None = None, arms: int = 5, radial_std: float = 0.3,
             tangential_std: float = 0.1, rate: float = 0.25) -> torch.Tensor:
    """Pinwheel of Johnson et al. (2016): Gaussian blobs at radius 1, each rotated by rate * exp(r)."""
    arm = torch.randint(0, arms, (n,), generator=generator)
    r = 1.0 + radial_std * torch.randn(n, generator=generator)
    tang = tangential_std * torch.randn(n, generator=generator)
    angle = arm * (2 * math.pi / arms) + rate * torch.exp(r)
    c, s = torch.cos(angle), torch.sin(angle)
    return 2.0 * torch.stack([c * r - s * tang, s * r + c * tang], 1)


TOY_SETS: dict[str, Callable[..., torch.Tensor]] = {
    "ring8": _mixture_sampler(ring8_mixture()),
    "grid25": _mixture_sampler(grid25_mixture()),
    "moons": two_moons,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "pinwheel": pinwheel,
}
