"""Small helpers shared by the fixed-step samplers: per-sample times, noise, the step loop."""

from __future__ import annotations

import torch


def times_like(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The scalar time t as a per-sample (B,) tensor in x's dtype (differentiable in t when t requires grad,
    as in calibration.py's gradient fit)."""
    if torch.is_tensor(t) and t.requires_grad:
        return t.to(x.dtype).reshape(1).repeat(x.shape[0])
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def grid_scalars(values: torch.Tensor) -> list:
    """A grid's per-point coefficients (log-SNR, sigma, alpha) as Python floats, or as 0-d tensors
    when the grid is being differentiated (calibration.py)."""
    return list(values.unbind()) if values.requires_grad else values.tolist()


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from generator (reproducible runs)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def step_pairs(ts: torch.Tensor, progress: bool, desc: str):
    """Yield (i, t_i, t_{i+1}) over consecutive grid points, with a tqdm bar when progress."""
    pairs = range(len(ts) - 1)
    if progress:
        from tqdm.auto import tqdm
        pairs = tqdm(pairs, desc=desc, leave=False)
    for i in pairs:
        yield i, ts[i], ts[i + 1]


def no_projection(method: str, project) -> None:
    """Raise if a per-step projection (inpainting) was requested from a method that cannot apply it."""
    if project is not None:
        raise ValueError(f"method {method!r} cannot apply a per-step projection such as inpainting; "
                         "use a fixed-step method (euler_maruyama, reverse_diffusion, ancestral, pc, "
                         "annealed_langevin, ddim, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, dpmpp_3m_sde, unipc, edm)")
