"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, App. H).

* `ResBlock`: the DDPM residual block (Ho et al. 2020) with the noise embedding added after the
  first convolution; with `resample` it is BigGAN's up/down block (Brock et al. 2019): the
  activations and the shortcut are both resampled (FIR or nearest / average) between the first
  normalisation and the first convolution, and the shortcut becomes a 1x1 convolution.
  out = (shortcut(x) + h) / sqrt(2) with `skip_rescale`, else shortcut(x) + h.
* `Attention`: single-head self-attention over all H*W positions (DDPM's), 1x1 projections.
* `Combine`: merges the input pyramid into the down path (1x1 convolution, then sum or concat).
* `timestep_embedding`: DDPM's sinusoidal features [sin(c w_k), cos(c w_k)], w_k = 10000^(-k/(half-1)).

Weights start from DDPM's initialisation: uniform with variance scale / fan_avg (TensorFlow's
variance_scaling, fan_avg = (fan_in + fan_out) / 2), zero biases; `init_scale` (0 in the paper's
configs) scales the last layer of each residual branch, so every block starts as its shortcut.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .resampling import Downsample, Upsample, downsample_2d, fir_kernel_2d, upsample_2d
from .unet import group_norm

ACTIVATIONS = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2)}


def ddpm_init_(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """Weight ~ U(-b, b) with b^2 = 3 scale / fan_avg (variance scale / fan_avg), bias = 0; returns layer."""
    w = layer.weight
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    fan_avg = (w.shape[0] + w.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        w.uniform_(-bound, bound)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def conv3x3(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    return ddpm_init_(nn.Conv2d(in_ch, out_ch, 3, padding=1), init_scale)


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    return ddpm_init_(nn.Conv2d(in_ch, out_ch, 1), init_scale)


def timestep_embedding(c: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's [sin(c w_k), cos(c w_k)], w_k = max_period^(-k / (half - 1)), k < half = dim // 2; (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=c.dtype, device=c.device) * -(math.log(max_period) / (half - 1)))
    arg = c[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, dim % 2))


def ddpm_resampling(fir: bool, fir_kernel, with_conv: bool, in_ch: int, out_ch: int | None = None,
                    up: bool = False) -> nn.Module:
    """An Upsample / Downsample layer with DDPM's initialisation of its convolution."""
    layer = (Upsample if up else Downsample)(in_ch, out_ch, with_conv, fir, fir_kernel)
    if layer.conv is not None:
        ddpm_init_(layer.conv)
    return layer


class ResBlock(nn.Module):
    """GN - act - [resample] - conv - (+ dense(act(emb))) - GN - act - dropout - conv, plus the shortcut.

    resample: None, "up" or "down" (BigGAN block). The shortcut is the identity when the shape is kept,
    else a 1x1 convolution (initialised with `shortcut_scale`: 0.1 for DDPM's block, 1 for BigGAN's).
    """

    def __init__(self, in_ch: int, out_ch: int | None, emb_dim: int | None, act: nn.Module, dropout: float,
                 skip_rescale: bool, init_scale: float, resample: str | None = None, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1), shortcut_scale: float = 1.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act, self.skip_rescale, self.resample, self.fir = act, skip_rescale, resample, fir
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv3x3(in_ch, out_ch)
        self.dense = None if emb_dim is None else ddpm_init_(nn.Linear(emb_dim, out_ch))
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_ch, out_ch, init_scale)
        self.shortcut = conv1x1(in_ch, out_ch, shortcut_scale) if in_ch != out_ch or resample else None
        if fir and resample:
            self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return upsample_2d(x, self.kernel) if self.fir else F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return downsample_2d(x, self.kernel) if self.fir else F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.act(self.norm0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv0(h)
        if emb is not None:
            h = h + self.dense(self.act(emb))[:, :, None, None]
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Attention(nn.Module):
    """x + proj(softmax(q^T k / sqrt(C)) v) over the H*W positions (one head), / sqrt(2) with skip_rescale."""

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (conv1x1(channels, channels, 0.1) for _ in range(3))
        self.proj = conv1x1(channels, channels, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for f in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, hh, ww)
        h = self.proj(h)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merge the input pyramid p into features h: conv1x1(p) + h ("sum") or [conv1x1(p), h] ("cat")."""

    def __init__(self, pyramid_ch: int, channels: int, method: str):
        super().__init__()
        self.method = method
        self.conv = conv1x1(pyramid_ch, channels)

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h
