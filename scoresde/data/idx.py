"""IDX files (the MNIST / Fashion-MNIST format, LeCun et al.), plain or gzip-compressed.

Layout: 2 zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions n, then n big-endian uint32 sizes, then the data,
big-endian, row-major. A directory in the MNIST layout holds `train-images-idx3-ubyte`,
`train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each maybe `.gz`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .dataset import QuantizedDataset

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path) -> np.ndarray:
    """The array stored in one IDX file (gzip detected from the content, not the name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:  # permissions, a directory of that name
        raise ValueError(f"{path} cannot be read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path} is not a readable gzip file ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header promises shape {shape} ({expected} bytes of data) "
                         f"but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(root: Path, split: str, kind: str) -> Path:
    """The images/labels file of a split in an MNIST-layout directory (dash or dot, maybe .gz)."""
    prefix = SPLIT_PREFIX[split]
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no {kind} file for split {split!r} in {root} (looked for {names[0]}[.gz])")


def load_idx_dataset(root, split: str = "train", name: str = "idx", num_classes: int = 10) -> QuantizedDataset:
    """An MNIST-layout directory as 256-level images (N, 1, H, W) with labels 0..num_classes - 1."""
    root = Path(root)
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split={split!r} is not allowed for IDX data: use 'train' or 'test'")
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} {'is a file, not a directory' if root.exists() else 'does not exist'}")
    images = read_idx(find_idx_file(root, split, "images"))
    labels_file = find_idx_file(root, split, "labels")
    labels = read_idx(labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{root}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{root}: {labels.shape[0]} labels for {images.shape[0]} images")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"{labels_file}: label {labels[bad[0]]} of image {bad[0]} is not allowed: labels must be in "
                         f"0..{num_classes - 1} ({bad.size} labels out of range)")
    return QuantizedDataset(torch.from_numpy(images.copy()).unsqueeze(1), 256,
                            torch.from_numpy(labels.astype(np.int64)), name=f"{name}[{split}]",
                            num_classes=num_classes)
