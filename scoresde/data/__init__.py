"""Data sets: 2-D toy distributions, scikit-learn's digits, and image files on disk.

`load_dataset(name, root=None, split="train", channels=None)` builds any registered set. Toy sets
are `ToyDataset`s (continuous, levels=None); the others are `QuantizedDataset`s holding integer
values and `levels`, dequantized for training by x = 2 (v + u) / levels - 1 (see `quantized`).
Other packages add data sets through the entry-point group `scoresde.datasets` (a callable
`(root, split, channels) -> dataset`).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..registry import Registry
from .cifar import load_cifar10_dataset
from .dataset import BatchStream, QuantizedDataset, ToyDataset
from .digits import DIGITS_LEVELS, digits_split_indices, load_digits_dataset
from .idx import load_idx_dataset, read_idx
from .image_folder import ImageFolderStream, load_image_folder
from .quantized import center, dequantize, log_det_jacobian, log_p_to_bits_per_dim, quantize, to_unit_bins
from .toy2d import TOY_SETS

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def _toy(name, root, split, channels):
    return ToyDataset(name, TOY_SETS[name])


def _needs_root(name, root):
    if not root:
        raise ValueError(f"data set {name!r} reads files: give the directory as data.root")
    return root


def _fashion_mnist(root, split, channels):
    root = root or FASHION_MNIST_ROOT
    if not Path(root).is_dir():
        hint = (" (install it with: apt-get install dataset-fashion-mnist)"
                if Path(root) == Path(FASHION_MNIST_ROOT) else "")
        raise FileNotFoundError(f"Fashion-MNIST directory {root} does not exist{hint}")
    return load_idx_dataset(root, split, name="fashion_mnist")


DATASETS = Registry("data set", "scoresde.datasets", builtins={
    **{name: partial(_toy, name) for name in TOY_SETS},
    "digits": lambda root, split, channels: load_digits_dataset(split),
    "fashion_mnist": _fashion_mnist,
    "mnist": lambda root, split, channels: load_idx_dataset(_needs_root("mnist", root), split, "mnist"),
    "cifar10": lambda root, split, channels: load_cifar10_dataset(_needs_root("cifar10", root), split),
    "image_folder": lambda root, split, channels, **kw: load_image_folder(_needs_root("image_folder", root),
                                                                          split, channels, **kw),
})


def load_dataset(name: str, root: str | None = None, split: str = "train", channels: int | None = None,
                 **options):
    """The data set registered as `name` ("ring8", "digits", "mnist", "cifar10", "image_folder", ...);
    `options` go to its builder (image_folder: image_size, stream)."""
    if not isinstance(name, str):
        raise TypeError(f"the data set name must be a string such as 'ring8', got {name!r}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a directory path (str or os.PathLike) or None, got {root!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a string such as 'train' or 'test', got {split!r}")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)):
        raise TypeError(f"channels must be an int (0 as stored, 1 grey, 3 RGB) or None, got {channels!r}")
    return DATASETS.get(name)(root, split, channels, **options)


def list_datasets() -> list[str]:
    return DATASETS.names()


__all__ = ["ToyDataset", "QuantizedDataset", "BatchStream", "load_dataset", "list_datasets", "DATASETS",
           "TOY_SETS", "dequantize", "center", "to_unit_bins", "quantize", "log_det_jacobian",
           "log_p_to_bits_per_dim", "read_idx", "load_idx_dataset", "load_cifar10_dataset", "load_image_folder",
           "ImageFolderStream",
           "load_digits_dataset", "digits_split_indices", "DIGITS_LEVELS", "FASHION_MNIST_ROOT"]
