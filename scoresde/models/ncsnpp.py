"""NCSN++ and DDPM++ (Song et al. 2021, App. H): the networks of the score-SDE paper.

A U-Net with `len(ch_mult)` levels of `num_res_blocks` residual blocks (`ncsnpp_layers.ResBlock`,
channels nf * ch_mult[i]), self-attention at the feature-map sizes in `attn_resolutions`, and
these choices, each one of the paper's ablations:

* resblock_type "biggan": up/down-sampling inside BigGAN residual blocks (Brock et al. 2019);
  "ddpm": separate up/down-sampling layers between plain blocks (Ho et al. 2020);
* fir / fir_kernel: anti-aliased FIR resampling (Karras et al. 2019) instead of nearest / average;
  resamp_with_conv: the separate resampling layers carry a 3x3 convolution;
* progressive (output side): "output_skip" sums the upsampled image predicted at every level
  (StyleGAN2's skip generator), "residual" a feature pyramid added to each level; "none";
* progressive_input: "input_skip" feeds the downsampled input image into every level (merged by
  progressive_combine "sum" or "cat"), "residual" a downsampled input-feature pyramid; "none";
* embedding_type: "fourier" (Gaussian Fourier features, scale fourier_scale; NCSN++) or
  "positional" (DDPM's sinusoidal features; DDPM++) of c_noise, then a 2-layer MLP (4 nf wide)
  whose output is added in every residual block; conditional=False drops the noise input;
* skip_rescale: residual sums divided by sqrt(2); init_scale: last layer of each branch;
  centered=False: inputs in [0, 1] are mapped to 2x - 1 first (score_sde's uncentered data).

NCSN++ (`NCSNpp`, registered "ncsnpp") defaults to the CIFAR-10 VE model (62.8M parameters),
DDPM++ (`DDPMpp`, "ddpmpp") to the VP one (61.8M): the same class, as in Song et al.'s code.
score_sde's `scale_by_sigma` (output / sigma) is ScoreModel's parametrization="score".
The contract is the project's: net(x, c_noise, y=None) -> shaped like x; num_classes=K adds a
learned class embedding to the noise embedding (label K is the null label).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .embeddings import GaussianFourierProjection
from .mlp import _check_int
from .ncsnpp_layers import (ACTIVATIONS, Attention, Combine, ResBlock, conv3x3, ddpm_init_, ddpm_resampling,
                            timestep_embedding)
from .resampling import fir_kernel_2d
from .unet import group_norm

CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
    "nonlinearity": tuple(ACTIVATIONS),
}


def _check_choice(name: str, value) -> str:
    if value not in CHOICES[name]:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(map(repr, CHOICES[name]))}")
    return value


class DownLevel(nn.Module):
    """One resolution of the down path: residual blocks (+ attention), then the downsampling step."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.downsample: nn.Module | None = None
        self.pyramid: nn.Module | None = None   # Combine (input_skip) or a Downsample with conv (residual)


class UpLevel(nn.Module):
    """One resolution of the up path: blocks on [h, skip], attention, the progressive branch, upsampling."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn: nn.Module | None = None
        self.pyramid_norm: nn.Module | None = None
        self.pyramid_conv: nn.Module | None = None
        self.pyramid_up: nn.Module | None = None
        self.upsample: nn.Module | None = None


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network for (B, in_channels, image_size, image_size) images (see the module)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, nf: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1,
                 resblock_type: str = "biggan", fir: bool = True, fir_kernel=(1, 3, 3, 1),
                 resamp_with_conv: bool = True, skip_rescale: bool = True, progressive: str = "none",
                 progressive_input: str = "residual", progressive_combine: str = "sum",
                 embedding_type: str = "fourier", fourier_scale: float = 16.0, init_scale: float = 0.0,
                 conditional: bool = True, nonlinearity: str = "swish", centered: bool = True,
                 num_classes: int | None = None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("nf", nf),
                            ("num_res_blocks", num_res_blocks)):
            _check_int(name, value)
        for name, value in (("resblock_type", resblock_type), ("progressive", progressive),
                            ("progressive_input", progressive_input), ("progressive_combine", progressive_combine),
                            ("embedding_type", embedding_type), ("nonlinearity", nonlinearity)):
            _check_choice(name, value)
        ch_mult, attn_resolutions, fir_kernel = tuple(ch_mult), tuple(attn_resolutions), tuple(fir_kernel)
        if not ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ch_mult):
            raise ValueError(f"ch_mult={ch_mult!r} is not allowed: it must be a non-empty sequence of integers >= 1")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size={image_size} is not allowed with {len(ch_mult)} levels (ch_mult={ch_mult}): "
                             f"it must be a multiple of 2^{len(ch_mult) - 1}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout={dropout!r} is not allowed: it must be in [0, 1)")
        if not (isinstance(init_scale, (int, float)) and init_scale >= 0):
            raise ValueError(f"init_scale={init_scale!r} is not allowed: it must be a number >= 0")
        fir_kernel_2d(fir_kernel)  # validates the taps
        if num_classes is not None and not conditional:
            raise ValueError(f"num_classes={num_classes!r} needs conditional=True (labels join the noise embedding)")
        if num_classes is not None:
            _check_int("num_classes", num_classes)

        self.in_channels, self.image_size, self.nf = in_channels, image_size, nf
        self.num_classes, self.conditional, self.centered = num_classes, conditional, centered
        self.embedding_type, self.progressive, self.progressive_input = embedding_type, progressive, progressive_input
        self.skip_rescale, self.resblock_type = skip_rescale, resblock_type
        self.act = act = ACTIVATIONS[nonlinearity]()
        self.resolutions = tuple(image_size // 2 ** i for i in range(len(ch_mult)))
        emb_dim = 4 * nf if conditional else None

        # noise (and class) embedding
        self.fourier = None
        if conditional:
            if embedding_type == "fourier":
                self.fourier = GaussianFourierProjection(2 * nf, fourier_scale)
            self.dense0 = ddpm_init_(nn.Linear(2 * nf if embedding_type == "fourier" else nf, 4 * nf))
            self.dense1 = ddpm_init_(nn.Linear(4 * nf, 4 * nf))
            self.label = None if num_classes is None else nn.Embedding(num_classes + 1, 4 * nf)

        def block(in_ch, out_ch=None, resample=None):
            return ResBlock(in_ch, out_ch, emb_dim, act, dropout, skip_rescale, init_scale, resample, fir,
                            fir_kernel, shortcut_scale=1.0 if resblock_type == "biggan" else 0.1)

        def attention(ch):
            return Attention(ch, skip_rescale, init_scale)

        # down path
        self.stem = conv3x3(in_channels, nf)
        skips, ch, pyramid_ch = [nf], nf, in_channels
        self.down = nn.ModuleList()
        for i, res in enumerate(self.resolutions):
            level = DownLevel()
            for _ in range(num_res_blocks):
                level.blocks.append(block(ch, nf * ch_mult[i]))
                ch = nf * ch_mult[i]
                if res in attn_resolutions:
                    level.attns.append(attention(ch))
                skips.append(ch)
            if i < len(ch_mult) - 1:
                level.downsample = (block(ch, resample="down") if resblock_type == "biggan"
                                    else ddpm_resampling(fir, fir_kernel, resamp_with_conv, ch))
                if progressive_input == "input_skip":
                    level.pyramid = Combine(pyramid_ch, ch, progressive_combine)
                    ch = 2 * ch if progressive_combine == "cat" else ch
                elif progressive_input == "residual":
                    level.pyramid = ddpm_resampling(fir, fir_kernel, True, pyramid_ch, ch)
                    pyramid_ch = ch
                skips.append(ch)
            self.down.append(level)
        self.pyramid_downsample = (ddpm_resampling(fir, fir_kernel, False, in_channels)
                                   if progressive_input == "input_skip" else None)
        self.mid = nn.ModuleList([block(ch), attention(ch), block(ch)])

        # up path
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            level = UpLevel()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(block(ch + skips.pop(), nf * ch_mult[i]))
                ch = nf * ch_mult[i]
            if self.resolutions[i] in attn_resolutions:
                level.attn = attention(ch)
            top = i == len(ch_mult) - 1
            if progressive == "output_skip":
                level.pyramid_norm, level.pyramid_conv = group_norm(ch), conv3x3(ch, in_channels, init_scale)
            elif progressive == "residual" and top:
                level.pyramid_norm, level.pyramid_conv = group_norm(ch), conv3x3(ch, ch)
            elif progressive == "residual":
                level.pyramid_up = ddpm_resampling(fir, fir_kernel, True, pyramid_ch, ch, up=True)
            pyramid_ch = in_channels if progressive == "output_skip" else ch
            if i > 0:
                level.upsample = (block(ch, resample="up") if resblock_type == "biggan"
                                  else ddpm_resampling(fir, fir_kernel, resamp_with_conv, ch, up=True))
            self.up.append(level)
        self.pyramid_upsample = (ddpm_resampling(fir, fir_kernel, False, in_channels, up=True)
                                 if progressive == "output_skip" else None)
        self.norm_out = self.conv_out = None
        if progressive != "output_skip":
            self.norm_out, self.conv_out = group_norm(ch), conv3x3(ch, in_channels, init_scale)

    def _embedding(self, c_noise: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.conditional:
            if y is not None:
                raise ValueError("labels y were given to a network built without num_classes")
            return None
        if c_noise.shape != (batch,):
            raise ValueError(f"c_noise must have shape ({batch},) (one noise level per sample), "
                             f"got {tuple(c_noise.shape)}")
        feats = self.fourier(c_noise) if self.fourier is not None else timestep_embedding(c_noise, self.nf)
        emb = self.dense1(self.act(self.dense0(feats)))
        if self.label is None:
            if y is not None:
                raise ValueError("labels y were given to a network built without num_classes; "
                                 "build it with num_classes=K to condition on classes")
            return emb
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=c_noise.device)
        elif y.shape != (batch,) or y.dtype.is_floating_point or bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"labels y must be integers in [0, {self.num_classes}] of shape ({batch},), got {y!r}")
        return emb + self.label(y.long())

    def _skip_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"for this network, got {tuple(x.shape)}")
        emb = self._embedding(c_noise, y, x.shape[0])
        if not self.centered:
            x = 2 * x - 1.0
        pyramid = x
        hs = [self.stem(x)]
        for level in self.down:
            for i, blk in enumerate(level.blocks):
                h = blk(hs[-1], emb)
                hs.append(level.attns[i](h) if len(level.attns) else h)
            if level.downsample is None:
                continue
            h = level.downsample(hs[-1], emb) if isinstance(level.downsample, ResBlock) else level.downsample(hs[-1])
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_downsample(pyramid)
                h = level.pyramid(pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = h = self._skip_sum(level.pyramid(pyramid), h)
            hs.append(h)

        h = self.mid[0](hs[-1], emb)
        h = self.mid[2](self.mid[1](h), emb)

        pyramid = None
        for level in self.up:
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if level.attn is not None:
                h = level.attn(h)
            if self.progressive == "output_skip":
                out = level.pyramid_conv(self.act(level.pyramid_norm(h)))
                pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = level.pyramid_conv(self.act(level.pyramid_norm(h)))
                else:
                    pyramid = h = self._skip_sum(level.pyramid_up(pyramid), h)
            if level.upsample is not None:
                h = level.upsample(h, emb) if isinstance(level.upsample, ResBlock) else level.upsample(h)
        if self.progressive == "output_skip":
            return pyramid
        return self.conv_out(self.act(self.norm_out(h)))


class DDPMpp(NCSNpp):
    """DDPM++: NCSN++ with the VP CIFAR-10 defaults (no FIR, no progressive input, positional embedding)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, nf: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1,
                 resblock_type: str = "biggan", fir: bool = False, fir_kernel=(1, 3, 3, 1),
                 resamp_with_conv: bool = True, skip_rescale: bool = True, progressive: str = "none",
                 progressive_input: str = "none", progressive_combine: str = "sum",
                 embedding_type: str = "positional", fourier_scale: float = 16.0, init_scale: float = 0.0,
                 conditional: bool = True, nonlinearity: str = "swish", centered: bool = True,
                 num_classes: int | None = None):
        super().__init__(in_channels, image_size, nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
                         resblock_type, fir, fir_kernel, resamp_with_conv, skip_rescale, progressive,
                         progressive_input, progressive_combine, embedding_type, fourier_scale, init_scale,
                         conditional, nonlinearity, centered, num_classes)
