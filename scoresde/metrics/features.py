"""Features of an image set in a feature network, the one pass every image metric shares, and their
cache as `.npz` files (reference statistics of a data set are computed once).

A statistics file holds `network` (the network's identity: name, weights hash, preprocessing),
`features` (N, D) float32 (what the network returns; KID and precision/recall need them), their
float64 `mean` and unbiased covariance `cov` (FID), `logits` when the network gives them, and a
`source` description. It is read with allow_pickle=False: no code runs on loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .image_sources import image_source
from .inception import FeatureNetwork, load_feature_network


@dataclass
class ImageFeatures:
    """Features (N, D) of N images in the network named by `network` (its identity), with their mean
    and covariance, and the network's logits (N, K) or None."""

    network: str
    features: np.ndarray
    logits: np.ndarray | None = None
    source: str = ""
    mean: np.ndarray | None = None
    cov: np.ndarray | None = None

    def __post_init__(self):
        if self.mean is None or self.cov is None:
            f64 = self.features.astype(np.float64)
            self.mean = f64.mean(0)
            self.cov = np.atleast_2d(np.cov(f64, rowvar=False)) if len(f64) > 1 else np.zeros((f64.shape[1],) * 2)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __repr__(self) -> str:
        return (f"ImageFeatures({self.source!r}, n={len(self)}, dim={self.features.shape[1]}, "
                f"logits={self.logits is not None}, network={self.network!r})")

    def save(self, path) -> Path:
        """Write the statistics file (see the module docstring); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(network=np.array(self.network), source=np.array(self.source), mean=self.mean,
                      cov=self.cov, features=self.features.astype(np.float32))
        if self.logits is not None:
            arrays["logits"] = self.logits.astype(np.float32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "ImageFeatures":
        with np.load(path, allow_pickle=False) as f:
            missing = {"network", "features", "mean", "cov"} - set(f.keys())
            if missing:
                raise ValueError(f"{path} is not an image-statistics file: it lacks {sorted(missing)}")
            return cls(str(f["network"]), f["features"], f["logits"] if "logits" in f else None,
                       str(f["source"]) if "source" in f else str(path), f["mean"], f["cov"])


def is_statistics_file(path) -> bool:
    """Whether path is an .npz written by ImageFeatures.save (rather than an .npz of images)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as f:
        return "network" in f.keys()


def image_features(images, features=None, *, batch_size: int = 50, device="cpu", progress: bool = True,
                   need_logits: bool = False, name: str = "images") -> ImageFeatures:
    """The features of `images` (a uint8 tensor (N, C, H, W), an .npz of images or a folder; see
    image_sources) in the network `features` (None: the FID Inception; see load_feature_network).

    With need_logits, a network without logits is an error before (or, for a network not yet run,
    right after) its first batch, not after a whole pass.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    source = image_source(images, name)
    network = load_feature_network(features)
    if need_logits:
        _require_logits(network)
    feats, logits = [], []
    with tqdm(total=source.n, desc=f"features of {source.name}", unit="img", disable=not progress,
              leave=False) as bar:
        for batch in source.batches(batch_size):
            f, lg = network(batch, device)
            if need_logits:
                _require_logits(network)
            feats.append(f)
            logits.append(lg)
            bar.update(batch.shape[0])
    return ImageFeatures(network.identity, torch.cat(feats).numpy(),
                         None if logits[0] is None else torch.cat(logits).numpy(), source.name)


def _require_logits(network: FeatureNetwork) -> None:
    if network.returns_logits is False:
        raise ValueError(f"the Inception Score needs class logits, but {network.name} returns features only "
                         f"(the FID Inception file holds no classifier); pass features= a network returning "
                         f"(features, logits)")


def statistics_or_images(x, network: FeatureNetwork | None, need_logits: bool = False, name: str = "images"):
    """x as ImageFeatures if it is statistics (an ImageFeatures or its .npz file), checked against
    the network when one is given, else as a validated ImageSource (nothing is computed yet)."""
    if isinstance(x, (str, os.PathLike)) and is_statistics_file(x):
        x = ImageFeatures.load(x)
    if not isinstance(x, ImageFeatures):
        return image_source(x, name)
    if network is not None and x.network != network.identity:
        raise ValueError(f"{name}: the statistics {x.source} were made by network {x.network!r}, but "
                         f"features= is {network.identity!r}; recompute them with that network")
    if need_logits and x.logits is None:
        raise ValueError(f"{name}: the statistics {x.source} hold no logits (network {x.network!r}); the "
                         f"Inception Score needs a network that returns (features, logits)")
    return x


def check_same_network(a: ImageFeatures, b: ImageFeatures) -> None:
    """Raise naming both networks unless a and b come from the same one."""
    if a.network != b.network:
        raise ValueError(f"the features of {a.source} come from network {a.network!r} but those of {b.source} "
                         f"from {b.network!r}; compare sets only in one network's features")
    if a.features.shape[1] != b.features.shape[1]:
        raise ValueError(f"{a.source} has {a.features.shape[1]}-D features but {b.source} {b.features.shape[1]}-D")


def reference_statistics(dataset: str, split: str = "test", *, root=None, n: int | None = None, features=None,
                         cache_dir=None, batch_size: int = 50, device="cpu", progress: bool = True) -> ImageFeatures:
    """The features of a registered data set's split (its first n images, all when n is None),
    computed once and cached as `<cache_dir>/<dataset>-<split>-<n or all>-<network key>.npz`.

    cache_dir defaults to $SCORESDE_CACHE or ~/.cache/scoresde, under metrics/. A cached file made
    by another network (its recorded identity differs) is an error naming both. Data sets with
    levels other than 256 are mapped to uint8 by v * 255 / (levels - 1), rounded.
    """
    from ..data import load_dataset

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None (all images), got {n!r}")
    network = load_feature_network(features)
    cache_dir = Path(cache_dir) if cache_dir is not None else \
        Path(os.environ.get("SCORESDE_CACHE", Path.home() / ".cache" / "scoresde")) / "metrics"
    path = cache_dir / f"{dataset}-{split}-{n or 'all'}-{network.key}.npz"
    if path.is_file():
        return statistics_or_images(path, network, name=f"{dataset}[{split}]")
    ds = load_dataset(dataset, root, split)
    if getattr(ds, "levels", None) is None:
        raise ValueError(f"data set {dataset!r} is not made of images (it has no quantization levels)")
    values = ds.values[:n]
    if ds.levels != 256:
        values = (values.double() * (255 / (ds.levels - 1))).round()
    stats = image_features(values.to(torch.uint8), network, batch_size=batch_size, device=device,
                           progress=progress, name=f"{dataset}[{split}]")
    stats.source = f"{dataset}[{split}] first {len(stats)} images" if n else f"{dataset}[{split}]"
    stats.save(path)
    return stats
