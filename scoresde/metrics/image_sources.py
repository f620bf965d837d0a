"""Images for the image metrics, from a uint8 tensor or array (N, C, H, W), an `.npz` file or a
folder of PNG/JPEG files, read batch by batch.

All are uint8 in [0, 255] with C = 1 (grey) or 3 (RGB), and one size per set: a metric compares
distributions at one resolution, so mixed sizes are an error rather than resized silently.
An `.npz` file holds one 4-D uint8 array (key `images` when there are several), (N, C, H, W) or
(N, H, W, C) as numpy tools write it (e.g. the reference batches of guided-diffusion); it is read
with allow_pickle=False. A folder's images are found recursively in sorted order; grey and
palette images are converted to RGB (grey repeated, as the network needs 3 channels anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UINT8_HINT = ("convert samples x in [-1, 1] with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), "
              "or quantized data with scoresde.data.quantize")


class ImageSource:
    """N images of one shape (C, H, W), yielded as uint8 tensors (B, C, H, W) by `batches`."""

    def __init__(self, name: str, n: int, shape: tuple[int, int, int], batches):
        self.name, self.n, self.shape, self._batches = name, n, shape, batches

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return self._batches(batch_size)

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, n={self.n}, shape={self.shape})"


def image_source(images, name: str = "images") -> ImageSource:
    """An ImageSource for a uint8 tensor/array (N, C, H, W), an .npz file of images or a folder."""
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, Path)):
        path = Path(images)
        if path.is_dir():
            return _folder_source(path)
        if path.suffix == ".npz" and path.is_file():
            return _tensor_source(_npz_images(path), str(path))
        raise FileNotFoundError(f"{name}: {path} is not a folder of images or an existing .npz file")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        return _tensor_source(images, name)
    raise TypeError(f"{name} must be a uint8 tensor (N, C, H, W), an .npz file, a folder of PNG/JPEG images "
                    f"or image statistics, got {type(images).__name__}")


def _tensor_source(images: torch.Tensor, name: str) -> ImageSource:
    if images.dtype != torch.uint8:
        values = ""
        if images.numel() and not images.is_complex() and images.device.type != "meta":
            values = f" with values in [{images.min().item():g}, {images.max().item():g}]"
        raise ValueError(f"{name}: images must be uint8 in [0, 255], got {images.dtype}{values}; {UINT8_HINT}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name}: images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: there are no images (shape {tuple(images.shape)})")
    images = images.cpu()

    def batches(batch_size):
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    return ImageSource(name, images.shape[0], tuple(images.shape[1:]), batches)


def _npz_images(path: Path) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.keys()}
    four_d = [k for k, a in arrays.items() if a.ndim == 4]
    key = "images" if "images" in four_d else (four_d[0] if len(four_d) == 1 else None)
    if key is None:
        raise ValueError(f"{path}: expected one 4-D image array (or one named 'images'), found "
                         f"{ {k: a.shape for k, a in arrays.items()} }")
    a = arrays[key]
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(a))


def _folder_source(folder: Path) -> ImageSource:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images under {folder} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    size = None
    for p in files:  # headers only: a bad file stops the run before any network time is spent
        try:
            with Image.open(p) as im:
                mode, im_size = im.mode, im.size
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"{p} is not a readable image: {err}") from None
        if mode.startswith("I") or mode == "F":
            raise ValueError(f"{p}: mode {mode!r} is not 8-bit; convert it to 8-bit grey or RGB")
        if size is None:
            size = im_size
        elif im_size != size:
            raise ValueError(f"{p} is {im_size[0]}x{im_size[1]} but {files[0]} is {size[0]}x{size[1]}; all images "
                             f"of a set must have the same size")

    def batches(batch_size):
        for i in range(0, len(files), batch_size):
            arrays = []
            for p in files[i:i + batch_size]:
                with Image.open(p) as im:
                    arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return ImageSource(str(folder), len(files), (3, size[1], size[0]), batches)
