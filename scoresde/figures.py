"""Figures of samples: a scatter beside held-out data for 2-D sets, an image grid for images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def scatter_figure(samples: torch.Tensor, data: torch.Tensor, path, title: str = "") -> Path:
    """Two panels with shared axes: held-out data (left) and model samples (right).

    The axes span the data (1.25 x its 99.9th percentile of |coordinate|); a panel's title counts
    the points outside them (non-finite ones included), so a sampler that diverged shows as
    "k of N outside the axes" rather than an empty panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, data = samples.detach().cpu().numpy(), data.detach().cpu().numpy()
    lim = float(np.percentile(np.abs(data), 99.9)) * 1.25
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    for ax, pts, label in ((axes[0], data, "held-out data"), (axes[1], samples, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        outside = int((~(np.abs(pts) <= lim).all(axis=1)).sum())
        ax.set_title(f"{label} (n={len(pts)}; {outside} of {len(pts)} outside the axes)" if outside
                     else f"{label} (n={len(pts)})")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    return _save(fig, path, title)


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


def loss_figure(metrics_csv, path, title: str = "") -> Path:
    """The training loss (and the gradient norm) against the step, from a run's metrics.csv: every
    row, so a resumed run draws its whole curve. Log y-axes when the values are all positive."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    step = np.array([float(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, key in zip(axes, ("loss", "grad_norm")):
        values = np.array([float(r[key]) for r in rows])
        ax.plot(step, values, lw=1, marker=".", ms=3)  # markers: a short run may have one row
        finite = values[np.isfinite(values)]
        if finite.size and (finite > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
    return _save(fig, path, title)


def _save(fig, path, title: str) -> Path:
    """Title, lay out, write at 120 dpi and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
