"""CIFAR-10 in its "python version" batches (Krizhevsky 2009): `data_batch_1..5`, `test_batch`.

Each batch is a pickled dict with b"data", a uint8 array (N, 3072) holding the red, green and
blue 32 x 32 planes of each image, and b"labels" (N ints). `root` may be the extracted
`cifar-10-batches-py` directory, its parent, or the `cifar-10-python.tar.gz` archive itself.
Batches are unpickled with an allow-list (numpy arrays and plain containers only), so a
tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .dataset import QuantizedDataset

NUM_CLASSES = 10
SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{where} is not a CIFAR-10 python batch: {e}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{where} is not a CIFAR-10 python batch (needs keys b'data' and b'labels')")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: data must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {labels.shape[0]} labels for {data.shape[0]} images")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise ValueError(f"{where}: label {labels[bad[0]]} of image {bad[0]} is not allowed: CIFAR-10 labels are "
                         f"0..{NUM_CLASSES - 1} ({bad.size} labels out of range)")
    return data, labels


def _read_batches(root: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise ValueError(f"{root} is neither a directory nor a CIFAR-10 tar archive (cifar-10-python.tar.gz)")
        with tarfile.open(root) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise FileNotFoundError(f"{root} has no CIFAR-10 batch {missing[0]!r}")
            return [_unpickle_batch(tar.extractfile(members[n]).read(), f"{root}:{n}") for n in names]
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"no CIFAR-10 batch {missing[0]!r} in {folder}")
    return [_unpickle_batch(_read(folder / n), str(folder / n)) for n in names]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:  # permissions, a directory of that name
        raise ValueError(f"{path} cannot be read: {e.strerror or e}") from None


def load_cifar10_dataset(root, split: str = "train") -> QuantizedDataset:
    """CIFAR-10 as 256-level images (N, 3, 32, 32) with labels 0..9."""
    root = Path(root)
    if split not in SPLIT_BATCHES:
        raise ValueError(f"split={split!r} is not allowed for CIFAR-10: use 'train' or 'test'")
    if not root.exists():
        raise FileNotFoundError(f"data directory {root} does not exist")
    batches = _read_batches(root, SPLIT_BATCHES[split])
    data = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[1] for b in batches])
    return QuantizedDataset(torch.from_numpy(data), 256, torch.from_numpy(labels), name=f"cifar10[{split}]",
                            num_classes=NUM_CLASSES)
