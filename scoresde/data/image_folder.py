"""A folder of PNG images as a 256-level data set.

Layout: `root/<split>/...` when such a subfolder exists, otherwise `root/...` is the train split.
Images are found recursively (sorted paths). If every image sits in a first-level subfolder, the
subfolder names (sorted) are the classes, as in torchvision's ImageFolder. All images must have
the same size; they are converted to grey (channels=1) or RGB (channels=3), by default to the
mode of the first image. Only 8-bit images are accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dataset import QuantizedDataset

_MODES = {1: "L", 3: "RGB"}


def load_image_folder(root, split: str = "train", channels: int | None = None) -> QuantizedDataset:
    """Images (N, C, H, W) from the PNG files under root (see the module docstring)."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} {'is a file, not a directory' if root.exists() else 'does not exist'}")
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels={channels!r} is not allowed: use 1 (grey) or 3 (RGB)")
    folder = root / split
    if not folder.is_dir():
        if split != "train":
            raise FileNotFoundError(f"no {split!r} subfolder in {root}")
        folder = root
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .png files under {folder}")
    classes = sorted({p.relative_to(folder).parts[0] for p in files})
    labelled = all(len(p.relative_to(folder).parts) > 1 for p in files)
    arrays, size = [], None
    for p in files:
        try:
            im = Image.open(p)
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"{p} is not a readable PNG image: {err}") from None
        with im:
            if im.mode.startswith("I") or im.mode == "F":
                raise ValueError(f"{p}: mode {im.mode!r} is not 8-bit; convert it to 8-bit grey or RGB")
            if channels is None:
                channels = 1 if im.mode in ("L", "1", "LA") else 3
            if size is None:
                size = im.size
            elif im.size != size:
                raise ValueError(f"{p} is {im.size[0]}x{im.size[1]} but {files[0]} is {size[0]}x{size[1]}; "
                                 f"all images must have the same size")
            arrays.append(np.asarray(im.convert(_MODES[channels]), dtype=np.uint8))
    values = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), size[1], size[0], channels)
    labels = None
    if labelled:
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[p.relative_to(folder).parts[0]] for p in files])
    return QuantizedDataset(values.permute(0, 3, 1, 2).contiguous(), 256, labels,
                            name=f"{root.name}[{split}]")
