"""Time grids for fixed-step samplers: t_0 = T > t_1 > ... > t_n = eps.

* `uniform_t`:   t_i = T + i/n (eps - T).
* `log_snr`:     lambda_i uniform between lambda(T) and lambda(eps), t_i = lambda^{-1}(lambda_i)
                 (Lu et al. 2022, DPM-Solver sec. 3.3).
* `karras`:      in noise-to-signal space sigma~ = sigma/alpha = exp(-lambda),
                 sigma~_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho
                 (Karras et al. 2022, eq. 5), mapped to t through the SDE's log-SNR inverse.

All grids are float64 and work for any SDE exposing `log_snr` and `t_of_log_snr`. A sampler's
`schedule` may also be an explicit grid, a 1-D tensor T = t_0 > ... > t_steps = eps, such as the one
`calibrate_schedule` (calibration.py) fits to a score model.
"""

from __future__ import annotations

import torch

from ..registry import Registry
from .._checks import check_count, check_positive_finite


def uniform_t(sde, steps: int, eps: float) -> torch.Tensor:
    """t_i uniform from T down to eps."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def _from_log_snr(sde, lam: torch.Tensor, eps: float) -> torch.Tensor:
    t = sde.t_of_log_snr(lam).to(torch.float64)
    t[0], t[-1] = sde.T, eps  # pin the ends exactly (the inverse is accurate to ~1e-12)
    return t


def _log_snr_ends(sde, eps: float) -> tuple[float, float]:
    if not hasattr(sde, "log_snr"):
        raise ValueError(f"this schedule needs an SDE with a log-SNR (a KernelSDE); {type(sde).__name__} has none")
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


def log_snr(sde, steps: int, eps: float) -> torch.Tensor:
    """lambda_i uniform from lambda(T) up to lambda(eps)."""
    lam_T, lam_eps = _log_snr_ends(sde, eps)
    return _from_log_snr(sde, torch.linspace(lam_T, lam_eps, steps + 1, dtype=torch.float64), eps)


def karras(sde, steps: int, eps: float, rho: float = 7.0) -> torch.Tensor:
    """Karras' rho schedule in sigma~ = exp(-lambda) (EDM eq. 5; rho = 7 there)."""
    rho = check_positive_finite("rho", rho)
    lam_T, lam_eps = _log_snr_ends(sde, eps)
    smax, smin = torch.tensor(-lam_T, dtype=torch.float64).exp(), torch.tensor(-lam_eps, dtype=torch.float64).exp()
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return _from_log_snr(sde, -torch.log(s), eps)


SCHEDULES = Registry("schedule", "scoresde.schedules",
                     builtins={"uniform_t": uniform_t, "log_snr": log_snr, "karras": karras})


def time_grid(sde, steps: int, eps: float, schedule: str | torch.Tensor = "uniform_t", **kwargs) -> torch.Tensor:
    """The (steps + 1,) float64 grid T = t_0 > ... > t_steps = eps of the named schedule, or the
    explicit grid `schedule` itself after checking its length, ends and order."""
    steps = check_count("steps", steps)
    if torch.is_tensor(schedule):
        return _explicit_grid(sde, steps, eps, schedule)
    grid = SCHEDULES.get(schedule)(sde, steps, eps, **kwargs)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"schedule {schedule!r} gave a time grid that is not strictly decreasing "
                         f"(steps={steps}, eps={eps}); use fewer steps or a larger eps")
    return grid


def _explicit_grid(sde, steps: int, eps: float, grid: torch.Tensor) -> torch.Tensor:
    """A user-supplied grid as float64, its ends pinned to exactly T and eps (relative slack 1e-6)."""
    if grid.dim() != 1 or grid.numel() != steps + 1 or not torch.is_floating_point(grid):
        raise ValueError(f"an explicit schedule must be a 1-D float tensor of steps + 1 = {steps + 1} times "
                         f"from T down to eps, got dtype {grid.dtype} and shape {tuple(grid.shape)} "
                         f"(pass steps=len(schedule) - 1)")
    grid = (grid if grid.requires_grad else grid.detach()).to("cpu", torch.float64).clone()  # grad: a fit
    ends = ((grid[0].item(), sde.T, "T"), (grid[-1].item(), eps, "eps"))
    for got, want, name in ends:
        if not abs(got - want) <= 1e-6 * want:
            raise ValueError(f"an explicit schedule must run from T={sde.T} to eps={eps}: its "
                             f"{'first' if name == 'T' else 'last'} time is {got:.6g}, not {name}={want:.6g}")
    grid[0], grid[-1] = sde.T, eps
    if not bool(torch.isfinite(grid).all() and (grid[1:] < grid[:-1]).all()):
        raise ValueError(f"an explicit schedule must be finite and strictly decreasing, got {grid.detach().tolist()}")
    return grid
