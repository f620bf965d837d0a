"""FIR resampling against its definition: upfirdn2d against zero insertion, padding, a 2-D
convolution and decimation written out with numpy loops; the x2 FIR filters against their closed
forms for the taps [1, 3, 3, 1]; the fused convolution layers against the unfused ops applied to
the zero-extended image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoresde.models.resampling import (Downsample, Upsample, conv_downsample_2d, downsample_2d, fir_kernel_2d,
                                        upfirdn2d, upsample_2d, upsample_conv_2d)


def upfirdn_definition(x: np.ndarray, k: np.ndarray, up: int, down: int, p0: int, p1: int) -> np.ndarray:
    """One (H, W) channel: insert up-1 zeros after each sample, pad (crop if < 0), convolve, keep every down-th."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    for i in range(h):
        for j in range(w):
            z[i * up, j * up] = x[i, j]
    z = np.pad(z, ((max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    z = z[max(-p0, 0):z.shape[0] - max(-p1, 0), max(-p0, 0):z.shape[1] - max(-p1, 0)]
    kh, kw = k.shape
    out = np.zeros((z.shape[0] - kh + 1, z.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for a in range(kh):
                for b in range(kw):
                    out[i, j] += z[i + a, j + b] * k[kh - 1 - a, kw - 1 - b]   # convolution: kernel flipped
    return out[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (0, 0)), (2, 1, (2, 1)), (1, 2, (1, 1)), (3, 2, (1, 3)),
                                         (2, 2, (-1, 2)), (1, 3, (0, -1))])
def test_upfirdn2d_matches_its_definition(up, down, pad):
    rng = np.random.default_rng(up * 10 + down)
    x = rng.standard_normal((2, 3, 5, 6))
    k = rng.standard_normal((3, 4))   # not symmetric: the flip and the axes are checked
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad).numpy()
    for n in range(2):
        for c in range(3):
            # the definition pads both axes alike; a 5x6 image has different H and W extents
            np.testing.assert_allclose(got[n, c], upfirdn_definition(x[n, c], k, up, down, *pad), atol=1e-12)


def _line_up(v):
    """[1,3,3,1] x2 upsampling of a zero-extended line:
    y[2i] = (v[i-1] + 3 v[i]) / 4,  y[2i+1] = (3 v[i] + v[i+1]) / 4."""
    e = np.concatenate([[0.0], v, [0.0]])
    out = np.zeros(2 * len(v))
    out[0::2] = (e[:-2] + 3 * e[1:-1]) / 4
    out[1::2] = (3 * e[1:-1] + e[2:]) / 4
    return out


def _line_down(v):
    """[1,3,3,1] x2 downsampling: y[j] = (v[2j-1] + 3 v[2j] + 3 v[2j+1] + v[2j+2]) / 8 (zeros outside)."""
    e = np.concatenate([[0.0], v, [0.0]])
    return np.array([(e[2 * j] + 3 * e[2 * j + 1] + 3 * e[2 * j + 2] + e[2 * j + 3]) / 8 for j in range(len(v) // 2)])


def test_fir_up_and_down_sampling_closed_forms():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    x = torch.from_numpy(np.outer(a, b))[None, None]        # separable image: the filters act per axis
    k = fir_kernel_2d([1, 3, 3, 1]).double()
    np.testing.assert_allclose(upsample_2d(x, k)[0, 0].numpy(), np.outer(_line_up(a), _line_up(b)), atol=1e-12)
    np.testing.assert_allclose(downsample_2d(x, k)[0, 0].numpy(), np.outer(_line_down(a), _line_down(b)), atol=1e-12)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)     # gain 1: a constant stays constant inside
    assert torch.allclose(upsample_2d(ones, k)[..., 1:-1, 1:-1], torch.ones(()).double())
    assert torch.allclose(downsample_2d(ones, k)[..., 1:-1, 1:-1], torch.ones(()).double())


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 1)])
def test_fused_convolutions_are_the_unfused_ops_on_the_zero_extended_image(taps):
    gen = torch.Generator().manual_seed(len(taps))
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    k, m = fir_kernel_2d(taps).double(), 4
    up = F.conv2d(upsample_2d(F.pad(x, (m,) * 4), k), w, padding=1)[..., 2 * m:-2 * m, 2 * m:-2 * m]
    torch.testing.assert_close(upsample_conv_2d(x, w, k), up, rtol=0, atol=1e-12)
    down = downsample_2d(F.conv2d(F.pad(x, (2 * m,) * 4), w, padding=1), k)[..., m:-m, m:-m]
    torch.testing.assert_close(conv_downsample_2d(x, w, k), down, rtol=0, atol=1e-12)


def test_layers_shapes_and_plain_variants():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for fir in (False, True):
        for conv in (False, True):
            up = Upsample(4, 6 if conv else None, with_conv=conv, fir=fir).double()
            down = Downsample(4, 6 if conv else None, with_conv=conv, fir=fir).double()
            assert up(x).shape == (2, 6 if conv else 4, 16, 16)
            assert down(x).shape == (2, 6 if conv else 4, 4, 4)
    torch.testing.assert_close(Upsample(4)(x), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    torch.testing.assert_close(Downsample(4)(x), x.reshape(2, 4, 4, 2, 4, 2).mean((3, 5)))
    layer = Downsample(4, 6, with_conv=True).double()        # DDPM's stride-2 conv on the bottom/right padded input
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.conv.weight, layer.conv.bias, stride=2)
    torch.testing.assert_close(layer(x), ref)


def test_bad_kernels_are_named():
    with pytest.raises(ValueError, match=r"fir_kernel=\[1, -1\].*non-zero sum"):
        fir_kernel_2d([1, -1])
    with pytest.raises(ValueError, match="square 2-D kernel"):
        fir_kernel_2d([[1, 2, 3]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    k = fir_kernel_2d([1, 3, 3, 1]).double()
    for f in (upsample_2d, downsample_2d):
        torch.testing.assert_close(f(x.cuda(), k.cuda()).cpu(), f(x, k))
