"""A U-Net of the DDPM++/NCSN++ family (Ho et al. 2020 App. B; Song et al. 2021 App. H).

Residual blocks  out = (skip(x) + conv(drop(act(GN(conv(act(GN(x))) + U act(emb))))) / sqrt(2)
(the 1/sqrt(2) skip rescaling of NCSN++), GroupNorm, multi-head self-attention at the feature-map
sizes listed in `attn_resolutions`, one level per entry of `ch_mult` (channels ch * mult), strided
3x3 convolutions down and nearest-neighbour + 3x3 convolution up, and the noise/class embedding of
embeddings.ConditioningEmbedding added in every residual block. The last convolution starts at zero.

Image sizes that are not a multiple of 2^(len(ch_mult) - 1) are zero-padded (bottom/right) to the
next multiple and the output is cropped back, so 8x8, 28x28 and 32x32 all work with any depth.
As in DDPM/score_sde, an attention resolution that no level has is simply not used; `resolutions`
lists the feature-map sizes of the levels and `attention_levels` the ones that attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ConditioningEmbedding
from .mlp import _check_int


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of >= 4 channels each (32 groups at 64+ channels, as in DDPM)."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Time-conditioned residual block with skip rescaling 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, heads of up to 64 channels, (x + attn) / sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // 64)
        while channels % self.heads:
            self.heads -= 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(out)) / math.sqrt(2)


class Level(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_config(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, dropout):
    _check_int("in_channels", in_channels)
    _check_int("image_size", image_size)
    _check_int("ch", ch)
    _check_int("num_res_blocks", num_res_blocks)
    ch_mult = tuple(ch_mult)
    if not ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult={ch_mult!r} is not allowed: it must be a non-empty sequence of integers >= 1")
    attn_resolutions = tuple(attn_resolutions)
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in attn_resolutions):
        raise ValueError(f"attn_resolutions={attn_resolutions!r} is not allowed: it must list integers >= 1")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout={dropout!r} is not allowed: it must be in [0, 1)")
    return ch_mult, attn_resolutions


class UNetEncoder(nn.Module):
    """Stem, down path and middle of the U-Net: returns the bottleneck features and the skips."""

    def __init__(self, in_channels: int, image_size: int, ch: int = 64, ch_mult=(1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1,
                 emb_dim: int = 256):
        super().__init__()
        ch_mult, attn_resolutions = _check_config(in_channels, image_size, ch, ch_mult, num_res_blocks,
                                                  attn_resolutions, dropout)
        self.in_channels, self.image_size = in_channels, image_size
        factor = 2 ** (len(ch_mult) - 1)
        self.padded_size = math.ceil(image_size / factor) * factor
        self.resolutions = tuple(self.padded_size // 2 ** i for i in range(len(ch_mult)))
        self.attention_levels = tuple(r for r in self.resolutions if r in attn_resolutions)

        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [ch]
        cur = ch
        for i, (mult, res) in enumerate(zip(ch_mult, self.resolutions)):
            for _ in range(num_res_blocks):
                self.down.append(Level(cur, ch * mult, emb_dim, dropout, res in attn_resolutions))
                cur = ch * mult
                self.skip_channels.append(cur)
            if i < len(ch_mult) - 1:
                self.down.append(Downsample(cur))
                self.skip_channels.append(cur)
        self.mid1 = ResBlock(cur, cur, emb_dim, dropout)
        self.mid_attn = SelfAttention(cur)
        self.mid2 = ResBlock(cur, cur, emb_dim, dropout)
        self.out_channels = cur

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"for this network, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pad = self.padded_size - self.image_size
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        return h, skips


class UNet(nn.Module):
    """net(x, c_noise, y=None) -> (B, C, H, W) for images x of shape (B, in_channels, image_size, image_size).

    Defaults are a small DDPM++ (the CIFAR-10 model has ch=128, ch_mult=(1, 2, 2, 2),
    num_res_blocks=4 in NCSN++ / 2 in DDPM, attention at 16). embedding: "fourier" (NCSN++) or
    "sinusoidal" (DDPM). num_classes: None or K, label K being the learned null label.
    """

    def __init__(self, in_channels: int, image_size: int, ch: int = 64, ch_mult=(1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1,
                 num_classes: int | None = None, embedding: str = "fourier", fourier_scale: float = 16.0):
        super().__init__()
        self.num_classes = num_classes
        emb_dim = 4 * _check_int("ch", ch)
        self.embed = ConditioningEmbedding(ch, emb_dim, num_classes, embedding, fourier_scale)
        self.encoder = UNetEncoder(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions,
                                   dropout, emb_dim)
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        skips = list(self.encoder.skip_channels)
        cur = self.encoder.out_channels
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            res = self.encoder.resolutions[i]
            for _ in range(num_res_blocks + 1):
                self.up.append(Level(cur + skips.pop(), ch * ch_mult[i], emb_dim, dropout, res in attn_resolutions))
                cur = ch * ch_mult[i]
            if i > 0:
                self.up.append(Upsample(cur))
        self.norm_out = group_norm(cur)
        self.conv_out = zero_init(nn.Conv2d(cur, in_channels, 3, padding=1))

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.encoder.resolutions

    @property
    def attention_levels(self) -> tuple[int, ...]:
        return self.encoder.attention_levels

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.encoder.check_input(x)
        emb = self.embed(c_noise, y, x.shape[0])
        h, skips = self.encoder(x, emb)
        for block in self.up:
            h = block(h) if isinstance(block, Upsample) else block(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[:, :, :self.encoder.image_size, :self.encoder.image_size]
