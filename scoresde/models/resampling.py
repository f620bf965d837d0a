"""FIR resampling of images (Karras et al. 2019, StyleGAN / StyleGAN2) in plain PyTorch.

`upfirdn2d` is the one primitive, applied to every channel of an (N, C, H, W) batch alike:

    y = decimate_down( k * pad( zero_insert_up(x) ) )

zero_insert_up puts up - 1 zeros after every sample along each axis (H -> H * up); pad adds
(pad0, pad1) zeros before / after along each axis (negative values crop); k * . is the 2-D
convolution (kernel flipped, no padding: output size n - kh + 1); decimate_down keeps every
down-th sample from the first. With the separable kernel k = outer(f, f) / sum(f)^2 of taps f
(default [1, 3, 3, 1], a binomial low-pass) this gives anti-aliased x2 up/down-sampling:

    upsample_2d:   up = 2, kernel 4 k (so a constant image stays constant), output 2H x 2W;
    downsample_2d: down = 2, kernel k, output H/2 x W/2.

`Upsample` / `Downsample` are the layers NCSN++ uses: nearest / 2x2 average pooling or the FIR
filters, each optionally with a 3x3 convolution. The FIR + convolution variants are StyleGAN2's
fused ops (one padding for both filters):

    up:   y = upfirdn2d(conv_transpose(x, w, stride 2), 4 k, pad),  i.e. FIR(w-filter(zero_insert(x)));
    down: y = conv(upfirdn2d(x, k, pad), w, stride 2),              i.e. stride-2 w-filter of FIR(x).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fir_kernel_2d(taps: Sequence[float] | torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The 2-D FIR kernel gain * K / sum(K) for 1-D taps f (K = outer(f, f)) or a square 2-D K."""
    k = torch.as_tensor(taps, dtype=torch.float64, device="cpu")
    if k.dim() == 1:
        k = torch.outer(k, k)
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.numel() == 0:
        raise ValueError(f"fir_kernel={list(taps)!r} is not allowed: give 1-D taps or a square 2-D kernel")
    total = k.sum()
    if not torch.isfinite(k).all() or total == 0:
        raise ValueError(f"fir_kernel={list(taps)!r} is not allowed: its taps must be finite with a non-zero sum")
    return (k * (gain / total)).to(torch.float32)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """decimate_down(kernel * pad(zero_insert_up(x))) on every channel of x (N, C, H, W); see the module."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    k = kernel.to(x.dtype).flip(0, 1)  # conv2d correlates; the flip makes it a convolution
    return F.conv2d(x, k.expand(c, 1, *k.shape), stride=down, groups=c)


def upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR upsampling by `factor` (kernel from fir_kernel_2d): output (N, C, H factor, W factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR downsampling by `factor` (kernel from fir_kernel_2d): output (N, C, H / factor, W / factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR upsampling fused with the convolution `weight` (out, in, k, k): output (N, out, H factor, W factor)."""
    size = weight.shape[-1]
    p = (kernel.shape[0] - factor) - (size - 1)
    x = F.conv_transpose2d(x, weight.flip(2, 3).transpose(0, 1), stride=factor)
    return upfirdn2d(x, kernel * factor ** 2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR downsampling fused with the convolution `weight` (out, in, k, k): output (N, out, H / factor, W / factor)."""
    p = (kernel.shape[0] - factor) + (weight.shape[-1] - 1)
    return F.conv2d(upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2)), weight, stride=factor)


class _Resample(nn.Module):
    def __init__(self, in_ch: int, out_ch: int | None, with_conv: bool, fir: bool, fir_kernel):
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError(f"resampling without a convolution keeps the channels: out_ch={out_ch} != in_ch={in_ch}")
        self.fir, self.fir_kernel = fir, tuple(fir_kernel)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1) if with_conv else None
        if fir:
            self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)


class Upsample(_Resample):
    """x2 upsampling: nearest neighbour or FIR (fir=True), optionally with a 3x3 convolution in_ch -> out_ch."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return x if self.conv is None else self.conv(x)
        if self.conv is None:
            return upsample_2d(x, self.kernel)
        return upsample_conv_2d(x, self.conv.weight, self.kernel) + self.conv.bias[:, None, None]


class Downsample(_Resample):
    """x2 downsampling: 2x2 average or FIR (fir=True), optionally with a 3x3 convolution in_ch -> out_ch.

    Without FIR the convolution is stride-2 on the input padded by one row/column at the bottom/right
    (TensorFlow's 'SAME' for even sizes, as in DDPM).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            if self.conv is None:
                return F.avg_pool2d(x, 2)
            return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.conv.weight, self.conv.bias, stride=2)
        if self.conv is None:
            return downsample_2d(x, self.kernel)
        return conv_downsample_2d(x, self.conv.weight, self.kernel) + self.conv.bias[:, None, None]
