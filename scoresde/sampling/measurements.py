"""Measurement models y = A(x_0) + n, n ~ N(0, noise_std^2 I), for inverse problems.

Linear operators know (a I + b A A^T)^{-1} r (`solve_gram`; a a number, b one per sample), which the posterior-covariance
guidance uses; it is exact for matrices, masks, channel means and average pooling (closed forms) and
for a blur (conjugate gradients: A A^T of a wide blur spans eigenvalues from about 1 down to nearly 0,
so no multiple of I stands in for it). Any callable x -> A(x) is a nonlinear operator (A A^T taken as I).

* `MatrixOperator(A)`: A of shape (M, D) on the flattened sample;
* `MaskOperator(mask)`: mask * x (inpainting; y is zero where mask == 0);
* `Grayscale()`: the mean over channels, score_sde's colorization task;
* `AveragePool(factor)`: factor x factor block means (super-resolution);
* `Blur(kernel)`: a 2-D convolution of every channel with one kernel, zero padding (deblurring).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_callable, check_count
from ..sdes.base import batch_view


class MatrixOperator:
    """A x for A of shape (M, D), acting on x.flatten(1)."""

    def __init__(self, A):
        if not torch.is_tensor(A) or not A.is_floating_point() or A.dim() != 2 or 0 in A.shape:
            raise ValueError(f"A must be a real floating-point tensor of shape (M, D), got "
                             f"{tuple(A.shape) if torch.is_tensor(A) else type(A).__name__}")
        self.A = A

    def __call__(self, x):
        xf = x.flatten(1)
        if xf.shape[1] != self.A.shape[1]:
            raise ValueError(f"A has shape {tuple(self.A.shape)} but x of shape {tuple(x.shape)} has "
                             f"{xf.shape[1]} values per sample, not D={self.A.shape[1]}")
        return xf @ self.A.to(x).T

    def solve_gram(self, r, a, b):
        """(a I + b A A^T)^{-1} r, r of shape (B, M), b of shape (B,)."""
        A = self.A.to(r)
        G = a * torch.eye(A.shape[0], dtype=r.dtype, device=r.device) + b.to(r)[:, None, None] * (A @ A.T)
        return torch.linalg.solve(G, r[..., None])[..., 0]

    def __repr__(self):
        return f"MatrixOperator(shape={tuple(self.A.shape)})"


class MaskOperator:
    """mask * x: observe the entries where mask == 1 (mask of 0/1 or bool, broadcast to a sample's shape)."""

    def __init__(self, mask):
        if not torch.is_tensor(mask) or mask.is_complex() or not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"mask must be a bool or floating-point tensor of 0 and 1, got "
                            f"{mask.dtype if torch.is_tensor(mask) else type(mask).__name__}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 (unobserved) and 1 (observed)")
        self.mask = mask

    def __call__(self, x):
        try:
            fits = torch.broadcast_shapes(self.mask.shape, x.shape[1:]) == x.shape[1:]
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {tuple(self.mask.shape)} does not broadcast to a sample's "
                             f"shape {tuple(x.shape[1:])}")
        return x * self.mask.to(x)

    def solve_gram(self, r, a, b):
        """A A^T = diag(mask): observed entries divide by a + b; unobserved residuals are 0 by construction."""
        return r * self.mask.to(r) / (a + batch_view(b.to(r), r))

    def __repr__(self):
        return f"MaskOperator(shape={tuple(self.mask.shape)})"


class Grayscale:
    """The mean of the channels (dim 1), keeping the channel axis: A A^T = I / C."""

    def __call__(self, x):
        if x.dim() < 3:
            raise ValueError(f"Grayscale needs images of shape (B, C, ...), got {tuple(x.shape)}")
        self.channels = x.shape[1]
        return x.mean(1, keepdim=True)

    def solve_gram(self, r, a, b):
        return r / (a + batch_view(b.to(r), r) / self.channels)

    def __repr__(self):
        return "Grayscale()"


class AveragePool:
    """Means over factor x factor blocks of (B, C, H, W) images: A A^T = I / factor^2."""

    def __init__(self, factor: int):
        self.factor = check_count("factor", factor)

    def __call__(self, x):
        if x.dim() != 4 or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"AveragePool({self.factor}) needs (B, C, H, W) images with H and W divisible by "
                             f"{self.factor}, got {tuple(x.shape)}")
        return F.avg_pool2d(x, self.factor)

    def solve_gram(self, r, a, b):
        return r / (a + batch_view(b.to(r), r) / self.factor ** 2)

    def __repr__(self):
        return f"AveragePool({self.factor})"


class Blur:
    """Each channel of (B, C, H, W) images convolved with one odd-sized 2-D kernel, zero padding."""

    def __init__(self, kernel):
        if not torch.is_tensor(kernel) or not kernel.is_floating_point() or kernel.dim() != 2 or \
                kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be a real 2-D tensor with odd sizes, got "
                             f"{tuple(kernel.shape) if torch.is_tensor(kernel) else type(kernel).__name__}")
        self.kernel = kernel

    @classmethod
    def gaussian(cls, size: int, std: float, dtype=torch.float32):
        """A normalized Gaussian kernel of odd `size` and standard deviation `std` pixels."""
        u = torch.arange(size, dtype=dtype) - size // 2
        g = torch.exp(-u ** 2 / (2 * std ** 2))
        return cls(torch.outer(g, g) / g.sum() ** 2)

    def __call__(self, x):
        if x.dim() != 4:
            raise ValueError(f"Blur needs (B, C, H, W) images, got {tuple(x.shape)}")
        k = self.kernel.to(x)[None, None].expand(x.shape[1], 1, -1, -1)
        return F.conv2d(x, k, padding=(self.kernel.shape[0] // 2, self.kernel.shape[1] // 2), groups=x.shape[1])

    def transpose(self, r):
        """A^T r: the convolution with the flipped kernel, zero padding."""
        return Blur(self.kernel.flip(0, 1))(r)

    def solve_gram(self, r, a, b, tol: float = 1e-6, max_iterations: int = 200):
        """(a I + b A A^T)^{-1} r by conjugate gradients per sample (the matrix is symmetric, positive
        definite for a > 0), to a residual below tol |r| per sample or for max_iterations (at a = 0, a
        noiseless blur, A A^T's near-zero eigenvalues make it ill-conditioned)."""
        bv = batch_view(b.to(r), r)

        def gram(v):
            return a * v + bv * self(self.transpose(v))

        def dot(u, v):
            return batch_view((u * v).flatten(1).sum(1), r)

        v = torch.zeros_like(r)
        res, p = r.clone(), r.clone()
        rr = dot(res, res)
        stop = tol ** 2 * rr
        for _ in range(max_iterations):
            if bool((rr <= stop).all()):
                break
            gp = gram(p)
            step = rr / dot(p, gp).clamp_min(torch.finfo(r.dtype).tiny)
            v, res = v + step * p, res - step * gp
            rr_new = dot(res, res)
            p = res + rr_new / rr.clamp_min(torch.finfo(r.dtype).tiny) * p
            rr = rr_new
        return v

    def __repr__(self):
        return f"Blur({tuple(self.kernel.shape)})"


class Measurement:
    """An observation y = A(x_0) + n, n ~ N(0, noise_std^2 I). y: one measurement (shaped like A of one
    sample) shared by the batch, or one per sample (batch first). A: one of this module's operators or
    any callable x -> A(x) (nonlinear)."""

    def __init__(self, operator, y, noise_std: float = 0.0):
        check_callable("operator", operator)
        if not torch.is_tensor(y) or not y.is_floating_point():
            raise TypeError(f"y must be a real floating-point tensor, got {y!r}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or infinite values")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or \
                not math.isfinite(noise_std) or noise_std < 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.operator, self.y, self.noise_std = operator, y, float(noise_std)

    def residual(self, x0):
        """y - A(x0), shape (B, ...), checking A(x0) and y agree in shape."""
        ax = self.operator(x0)
        if not torch.is_tensor(ax) or ax.shape[0] != x0.shape[0]:
            raise ValueError(f"the operator {self.operator!r} must return a (batch, ...) tensor, got "
                             f"{tuple(ax.shape) if torch.is_tensor(ax) else type(ax).__name__}")
        y = self.y.to(ax)
        if y.shape != ax.shape and y.shape != ax.shape[1:]:
            raise ValueError(f"y has shape {tuple(y.shape)} but A(x) has shape {tuple(ax.shape)} (per sample "
                             f"{tuple(ax.shape[1:])}): pass y shaped like A of one sample, or one per sample")
        return y - ax

    def solve_gram(self, r, a, b):
        """(a I + b A A^T)^{-1} r (b one per sample), with A A^T = I for an operator that does not say."""
        solve = getattr(self.operator, "solve_gram", None)
        return solve(r, a, b) if solve is not None else r / (a + batch_view(b.to(r), r))

    def __repr__(self):
        return f"Measurement({self.operator!r}, noise_std={self.noise_std})"
