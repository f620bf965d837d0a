"""scikit-learn's handwritten digits: 1797 images of 8 x 8 pixels with 17 grey levels (0..16).

The split is the one fixed for the density benchmark: a stratified 20% test split,
`train_test_split(..., test_size=0.2, stratify=y, random_state=0)` (1437 train / 360 test).
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import QuantizedDataset

DIGITS_LEVELS = 17


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test samples of the fixed protocol."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)


def load_digits_dataset(split: str = "train") -> QuantizedDataset:
    """The digits as integer values of shape (N, 1, 8, 8) in {0, ..., 16}, with labels 0..9."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} is not allowed for digits: use 'train', 'test' or 'all'")
    d = load_digits()
    values = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    if split != "all":
        idx = torch.from_numpy(digits_split_indices()[0 if split == "train" else 1])
        values, labels = values[idx], labels[idx]
    return QuantizedDataset(values, DIGITS_LEVELS, labels, name=f"digits[{split}]", num_classes=10)
