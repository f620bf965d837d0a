"""Figures of samples: a scatter beside held-out data for 2-D sets, an image grid for images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def scatter_figure(samples: torch.Tensor, data: torch.Tensor, path, title: str = "") -> Path:
    """Two panels with shared axes: held-out data (left) and model samples (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, data = samples.detach().cpu().numpy(), data.detach().cpu().numpy()
    lim = float(np.percentile(np.abs(data), 99.9)) * 1.25
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    for ax, pts, label in ((axes[0], data, "held-out data"), (axes[1], samples, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        ax.set_title(f"{label} (n={len(pts)})")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_grid(values: torch.Tensor, levels: int, path, nrow: int | None = None, scale: int = 1,
               pad: int = 1) -> Path:
    """Save integer images (N, C, H, W) in [0, levels) as one PNG grid, each pixel `scale` x `scale`."""
    from PIL import Image

    v = values.detach().cpu().to(torch.float64)
    n, c, h, w = v.shape
    if c not in (1, 3):
        raise ValueError(f"image_grid needs 1 or 3 channels, got {c}")
    img = (v * (255.0 / (levels - 1))).round().clamp(0, 255).to(torch.uint8)
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img[i]
    arr = grid.permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = Path(path)
    pil.save(path)
    return path
