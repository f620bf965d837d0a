"""A folder of PNG images as a 256-level data set.

Layout: `root/<split>/...` when such a subfolder exists, otherwise `root/...` is the train split.
Images are found recursively (sorted paths). If every image sits in a first-level subfolder, the
subfolder names (sorted, over the train and test splits together, so that a split missing a class
keeps the others' numbers) are the classes, as in torchvision's ImageFolder. All images must have
the same size; they are converted to grey (channels=1) or RGB (channels=3), by default to the mode
of the first image. Only 8-bit images are accepted; an unreadable, truncated or decompression-bomb
file is a ValueError naming it.
"""

from __future__ import annotations

import warnings
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
    labelled = all(len(p.relative_to(folder).parts) > 1 for p in files)
    # the classes of every split, so that a split missing a class keeps the others' numbers
    splits = [root / s for s in ("train", "test") if (root / s).is_dir()] if folder != root else [root]
    classes = sorted({d.name for s in splits for d in s.iterdir() if d.is_dir() and any(d.rglob("*.png"))} |
                     {p.relative_to(folder).parts[0] for p in files if labelled})
    arrays, size = [], None
    for p in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
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
        except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # unreadable, truncated ("image file is truncated"), or a header promising more pixels than
            # PIL's decompression-bomb limit (PIL.UnidentifiedImageError is an OSError)
            raise ValueError(f"{p} is not a readable PNG image: {type(err).__name__}: {err}") from None
    values = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), size[1], size[0], channels)
    labels = None
    if labelled:
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[p.relative_to(folder).parts[0]] for p in files])
    return QuantizedDataset(values.permute(0, 3, 1, 2).contiguous(), 256, labels,
                            name=f"{root.name}[{split}]", num_classes=len(classes) if labelled else None)
