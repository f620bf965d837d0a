"""A folder of PNG or JPEG images as a 256-level data set, in memory or streamed from disk.

Layout: `root/<split>/...` when such a subfolder exists, otherwise `root/...` is the train split.
Images (.png, .jpg, .jpeg) are found recursively (sorted paths). If every image sits in a
first-level subfolder, the subfolder names (sorted, over the train and test splits together, so
that a split missing a class keeps the others' numbers) are the classes, as in torchvision's
ImageFolder. Images are converted to grey (channels=1) or RGB (channels=3), by default to the mode
of the first image. With image_size, each is resized (bicubic) so that its shorter side is
image_size and center-cropped to image_size x image_size; without it, all must have the same size.
Only 8-bit images are accepted; an unreadable, truncated or decompression-bomb file is a
ValueError naming it.

`load_image_folder` reads every image into one uint8 tensor; `ImageFolderStream` reads them when a
batch asks for them (`values[idx]`), for sets larger than memory. Both give the same batches.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .dataset import QuantizedDataset

_MODES = {1: "L", 3: "RGB"}
_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFiles:
    """The images of a folder as a lazily read uint8 array (N, C, H, W): `files[idx]` reads rows idx
    (an int tensor, a slice or an int)."""

    def __init__(self, paths: list[Path], channels: int, size: tuple[int, int], image_size: int | None):
        self.paths, self.channels, self.image_size = paths, channels, image_size
        self.shape = (len(paths), channels, size[1], size[0])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx) -> torch.Tensor:
        rows = range(len(self.paths))[idx] if isinstance(idx, (slice, int)) else torch.as_tensor(idx).tolist()
        if isinstance(rows, int):
            return self._read(rows)
        return torch.stack([self._read(i) for i in rows]) if len(rows) else torch.zeros((0, *self.shape[1:]),
                                                                                        dtype=torch.uint8)

    def _read(self, i: int) -> torch.Tensor:
        array = _read_image(self.paths[i], self.channels, self.image_size, expected=self.shape[:1:-1])[0]
        return torch.from_numpy(array).permute(2, 0, 1)


class ImageFolderStream:
    """An image folder read from disk batch by batch: `values` is an `ImageFiles`; levels, labels,
    num_classes, name and event_shape as in `QuantizedDataset`."""

    levels = 256

    def __init__(self, values: ImageFiles, labels: torch.Tensor | None, name: str, num_classes: int | None):
        self.values, self.labels, self.name, self.num_classes = values, labels, name, num_classes

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"ImageFolderStream({self.name!r}, n={len(self)}, shape={self.event_shape}, classes={self.num_classes})"


def load_image_folder(root, split: str = "train", channels: int | None = None, image_size: int | None = None,
                      stream: bool = False) -> QuantizedDataset | ImageFolderStream:
    """Images (N, C, H, W) from the image files under root (see the module docstring); read into
    memory, or with stream=True as an `ImageFolderStream`."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} is not allowed: it must be an integer >= 1 (or None: as stored)")
    files, labels, classes, name = _find_images(root, split)
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels={channels!r} is not allowed: use 1 (grey) or 3 (RGB)")
    first, channels = _read_image(files[0], channels, image_size)
    size = (first.shape[1], first.shape[0])
    labels = None if labels is None else torch.tensor(labels)
    num_classes = len(classes) if labels is not None else None
    lazy = ImageFiles(files, channels, size, image_size)
    if stream:
        return ImageFolderStream(lazy, labels, name, num_classes)
    return QuantizedDataset(lazy[:], 256, labels, name=name, num_classes=num_classes)


def _find_images(root, split: str):
    """(files, labels or None, classes, name) of root's split."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} {'is a file, not a directory' if root.exists() else 'does not exist'}")
    folder = root / split
    if not folder.is_dir():
        if split != "train":
            raise FileNotFoundError(f"no {split!r} subfolder in {root}")
        folder = root
    is_image = lambda p: p.suffix.lower() in _SUFFIXES and p.is_file()
    files = sorted(p for p in folder.rglob("*") if is_image(p))
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(_SUFFIXES)}) under {folder}")
    labelled = all(len(p.relative_to(folder).parts) > 1 for p in files)
    # the classes of every split, so that a split missing a class keeps the others' numbers
    splits = [root / s for s in ("train", "test") if (root / s).is_dir()] if folder != root else [root]
    classes = sorted({d.name for s in splits for d in s.iterdir() if d.is_dir() and any(map(is_image, d.rglob("*")))}
                     | {p.relative_to(folder).parts[0] for p in files if labelled})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[p.relative_to(folder).parts[0]] for p in files] if labelled else None
    return files, labels, classes, f"{root.name}[{split}]"


def _read_image(path: Path, channels: int | None, image_size: int | None,
                expected: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """(uint8 array (H, W, C), channels) of one file: converted, resized and cropped to image_size;
    without image_size its (W, H) must be `expected` (when given). ValueError naming the file."""
    from PIL import Image

    kind = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode.startswith("I") or im.mode == "F":
                    raise ValueError(f"{path}: mode {im.mode!r} is not 8-bit; convert it to 8-bit grey or RGB")
                if channels is None:
                    channels = 1 if im.mode in ("L", "1", "LA") else 3
                if image_size is None and expected is not None and im.size != tuple(expected):
                    raise ValueError(f"{path} is {im.size[0]}x{im.size[1]} but the folder's first image is "
                                     f"{expected[0]}x{expected[1]}; all images must have the same size "
                                     "(or set data.image_size to resize them)")
                im = im.convert(_MODES[channels])
                if image_size is not None:
                    im = _resize_center_crop(im, image_size)
                return np.array(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels), channels
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # unreadable, truncated ("image file is truncated"), or a header promising more pixels than
        # PIL's decompression-bomb limit (PIL.UnidentifiedImageError is an OSError)
        raise ValueError(f"{path} is not a readable {kind} image: {type(err).__name__}: {err}") from None


def _resize_center_crop(im, size: int):
    """The shorter side scaled to `size` (bicubic), then the central size x size square."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return im.crop((left, top, left + size, top + size))
