"""The reverse SDE through torchsde.sdeint: any of its solvers for additive noise (srk, euler,
milstein, midpoint, heun, log_ode, reversible_heun), fixed steps or adaptive, on a seeded Brownian
interval.

Integrated in increasing time s = T - t from s = 0 to T - eps (torchsde needs increasing times),
on flattened states (B, D) with the ReverseSDE's torchsde view. srk is strong order 1.5 for
additive noise (Roessler 2010) and needs the space-time Levy area, log_ode Foster's; the noise being
additive, the Ito and Stratonovich forms coincide, so Stratonovich solvers apply too.
reversible_heun asks for the full diffusion matrix g (B, D, D), built as a diagonal: O(B D^2)
memory, for low-dimensional data only.
"""

from __future__ import annotations

import torch
import torchsde

from .._checks import check_positive_finite
from .common import no_projection

ITO = ("euler", "milstein", "srk")
STRATONOVICH = ("midpoint", "heun", "log_ode", "reversible_heun")
LEVY_AREA = {"srk": "space-time", "log_ode": "foster"}


class _ReverseView:
    """torchsde's view of the reverse SDE (f, g_prod from ReverseSDE; g as a diagonal matrix)."""

    noise_type = "additive"

    def __init__(self, rsde, sde_type: str):
        self.rsde, self.sde_type = rsde, sde_type

    def f(self, s, y):
        return self.rsde.f(s, y)

    def g_prod(self, s, y, v):
        return self.rsde.g_prod(s, y, v)

    def g(self, s, y):
        return torch.diag_embed(self.rsde.g_prod(s, y, torch.ones_like(y)))


def torchsde_method(score_fn, sde, x, *, steps=None, eps, generator, progress, project,
                    solver="srk", adaptive=False, rtol=1e-3, atol=1e-3):
    """Solve the reverse SDE with torchsde (default srk, 100 fixed steps; adaptive=True uses rtol/atol)."""
    no_projection("torchsde", project)
    if solver not in ITO + STRATONOVICH:
        raise ValueError(f"unknown torchsde solver {solver!r} for additive noise; allowed: "
                         f"{', '.join(ITO + STRATONOVICH)}")
    if adaptive and steps is not None:
        raise ValueError(f"steps={steps} is not allowed with adaptive=True; torchsde chooses its steps from rtol/atol")
    steps = steps or 100
    rtol, atol = check_positive_finite("rtol", rtol), check_positive_finite("atol", atol)
    rsde = type(sde.reverse(score_fn))(sde, score_fn, event_shape=tuple(x.shape[1:]))
    view = _ReverseView(rsde, "ito" if solver in ITO else "stratonovich")
    y0 = x.reshape(x.shape[0], -1)
    ts = torch.tensor([0.0, sde.T - eps], dtype=y0.dtype, device=y0.device)
    dt = float(ts[-1]) / steps
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    bm = torchsde.BrownianInterval(t0=0.0, t1=float(ts[-1]), size=tuple(y0.shape), dtype=y0.dtype,
                                   device=y0.device, entropy=seed, dt=dt,
                                   levy_area_approximation=LEVY_AREA.get(solver, "none"))
    ys = torchsde.sdeint(view, y0, ts, bm=bm, method=solver, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol)
    return ys[-1].reshape(x.shape), {"steps": None if adaptive else steps, "solver": solver}
