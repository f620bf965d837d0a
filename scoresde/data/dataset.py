"""The two kinds of data set, and the infinite stream of training batches drawn from them.

* `ToyDataset`: a continuous distribution sampled afresh from a torch.Generator (levels = None).
* `QuantizedDataset`: a finite array of integer values in {0, ..., levels - 1} (digits, images),
  shape (N, C, H, W), with optional integer labels. Training batches are dequantized afresh
  (`quantized.dequantize`), so the model sees x = 2 (v + u) / levels - 1.

`BatchStream` draws all of its randomness (data order, toy draws, dequantization noise) from one
CPU torch.Generator and exposes its full state, so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from .quantized import check_levels, dequantize


class ToyDataset:
    """A 2-D toy distribution: `sample(n, generator)` draws n fresh points, shape (n, 2)."""

    levels = None
    num_classes = None
    event_shape = (2,)

    def __init__(self, name: str, sampler: Callable[..., torch.Tensor]):
        self.name = name
        self._sampler = sampler

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._sampler(n, generator)

    def heldout(self, n: int, seed: int) -> torch.Tensor:
        """n points from a generator seeded with `seed` (use seeds no training run uses)."""
        return self.sample(n, torch.Generator().manual_seed(seed))

    def __repr__(self) -> str:
        return f"ToyDataset({self.name!r})"


class QuantizedDataset:
    """Integer values (N, C, H, W) in [0, levels), optional labels (N,) in [0, num_classes).

    num_classes defaults to the largest label + 1; loaders that know the class count pass it, so a
    split that misses a class still builds the model the run trained.
    """

    def __init__(self, values: torch.Tensor, levels: int, labels: torch.Tensor | None = None,
                 name: str = "", num_classes: int | None = None):
        self.levels = check_levels(levels)
        values = torch.as_tensor(values)
        if values.dim() != 4:
            raise ValueError(f"{name or 'data'}: values must have shape (N, C, H, W), got {tuple(values.shape)}")
        if values.shape[0] == 0:
            raise ValueError(f"{name or 'data'}: the data set is empty")
        if values.is_floating_point() or int(values.min()) < 0 or int(values.max()) >= levels:
            raise ValueError(f"{name or 'data'}: values must be integers in [0, {levels}), "
                             f"got range [{values.min().item()}, {values.max().item()}] ({values.dtype})")
        self.values = values
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (values.shape[0],):
                raise ValueError(f"{name or 'data'}: {labels.numel()} labels for {values.shape[0]} samples")
            # a split may miss a class: the data set's own class count (not the split's) sizes a model
            num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
            bad = (labels < 0) | (labels >= num_classes)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"{name or 'data'}: label {int(labels[i])} of sample {i} is not allowed: labels "
                                 f"must be in 0..{num_classes - 1}")
        self.labels = labels
        self.num_classes = num_classes if labels is not None else None
        self.name = name

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def __len__(self) -> int:
        return self.values.shape[0]

    def __repr__(self) -> str:
        return (f"QuantizedDataset({self.name!r}, n={len(self)}, shape={self.event_shape}, "
                f"levels={self.levels}, classes={self.num_classes})")


class BatchStream:
    """Endless training batches (x, y): toy draws, or epochs of dequantized samples in random order.

    A finite set is visited in a fresh random permutation each epoch; the last incomplete batch of
    an epoch is dropped, so every batch has exactly `batch_size` samples. y is None without labels.
    With random_flip (images only; training data augmentation, as Song et al. 2021 do for CIFAR-10)
    each image is mirrored left-right with probability 1/2, drawn from the same generator.
    A set whose values are read from disk (`image_folder.ImageFolderStream`) is read `workers`
    processes ahead, the epoch's batches in order, pinned in memory for a CUDA device; the batches
    are the same as from memory, since every random draw stays in this process.
    """

    def __init__(self, dataset, batch_size: int, generator: torch.Generator, device=None,
                 random_flip: bool = False, workers: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed: it must be an integer >= 1")
        finite = dataset.levels is not None
        if finite and batch_size > len(dataset):
            raise ValueError(f"batch_size={batch_size} is larger than the data set ({len(dataset)} samples)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.device = device
        self.random_flip = random_flip
        self.workers = workers if finite and not torch.is_tensor(dataset.values) else 0
        self._prefetched = None  # the rest of this epoch's batches, read by DataLoader workers
        if random_flip and not finite:
            raise ValueError(f"random_flip needs an image data set, got {dataset!r}")
        self.epoch = 0
        self._perm = torch.randperm(len(dataset), generator=generator) if finite else None
        self._pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        ds, b = self.dataset, self.batch_size
        if self._perm is None:
            return ds.sample(b, self.generator).to(self.device), None
        if self._pos + b > len(ds):
            self._perm = torch.randperm(len(ds), generator=self.generator)
            self._pos = 0
            self.epoch += 1
            self._prefetched = None
        idx = self._perm[self._pos:self._pos + b]
        v = self._read_ahead() if self.workers else ds.values[idx]
        self._pos += b
        if self.random_flip:
            flip = torch.rand(b, generator=self.generator) < 0.5
            v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
        x = dequantize(v, ds.levels, generator=self.generator)
        y = ds.labels[idx] if ds.labels is not None else None
        return x.to(self.device), (y.to(self.device) if y is not None else None)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm, "pos": self._pos,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._pos, self.epoch = state["perm"], int(state["pos"]), int(state["epoch"])
        self._prefetched = None

    def _read_ahead(self) -> torch.Tensor:
        """The values of rows perm[pos:pos + batch_size], from workers reading the epoch's batches in order."""
        if self._prefetched is None:
            from torch.utils.data import DataLoader

            b, n = self.batch_size, len(self.dataset)
            batches = [self._perm[p:p + b].tolist() for p in range(self._pos, n - b + 1, b)]
            pin = torch.device(self.device).type == "cuda" if self.device is not None else False
            self._prefetched = iter(DataLoader(self.dataset.values, batch_sampler=batches, num_workers=self.workers,
                                               pin_memory=pin))
        return next(self._prefetched)
