"""Image-quality metrics in a feature network's space: FID, KID, Inception Score, precision/recall.

`fake` and `reference` are uint8 images (N, C, H, W), `.npz` files of images, folders of PNG/JPEG,
or statistics (an ImageFeatures or its `.npz`, e.g. from `reference_statistics`); the network is
the FID Inception unless `features=` names another (see inception.py for both and for the
preprocessing). `image_metrics` computes several metrics from one feature pass per set.

The arithmetic on features is separate (`kernel_inception_distance`, `inception_score_of_logits`,
`manifold_precision_recall`, and points.gaussian_frechet_distance) so that it can be checked
against closed forms without a network.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .features import ImageFeatures, check_same_network, image_features, statistics_or_images
from .inception import load_feature_network
from .points import gaussian_frechet_distance

METRICS = ("fid", "kid", "is", "pr")
KID_MATRIX_ENTRIES = 2 ** 24  # 128 MiB of float64: above it, KID computes each subset's kernel afresh


class KID(NamedTuple):
    """Kernel Inception Distance: the mean of the unbiased MMD^2 estimates over `subsets` random
    subsets of `subset_size` images per set, and their standard deviation (the "+-" of Binkowski et
    al. 2018 and torch-fidelity: the spread of one subset's estimate, not the error of the mean; 0
    with one subset, used when subset_size covers both sets, as every subset is then the whole set)."""
    mean: float
    std: float
    subsets: int
    subset_size: int

    def __str__(self) -> str:
        return (f"KID {self.mean:.5f} +- {self.std:.5f} ({self.subsets} subset{'s' * (self.subsets != 1)} "
                f"of {self.subset_size})")


class InceptionScore(NamedTuple):
    """exp(E_x KL(p(y|x) || p(y))) on each of `splits` consecutive splits: their mean and std."""
    mean: float
    std: float
    splits: int

    def __str__(self) -> str:
        return f"IS {self.mean:.3f} +- {self.std:.3f} ({self.splits} splits)"


class PrecisionRecall(NamedTuple):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-nearest-neighbour radii."""
    precision: float
    recall: float
    k: int

    def __str__(self) -> str:
        return f"precision {self.precision:.4f}, recall {self.recall:.4f} (k = {self.k})"


def kernel_inception_distance(feat_x, feat_y, subsets: int = 100, subset_size: int = 1000,
                              generator: torch.Generator | None = None) -> KID:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / D + 1)^3 (Binkowski et al.
    2018), on `subsets` pairs of random subsets (without replacement) of m = min(subset_size, N_x,
    N_y) rows each (one pair when m covers both sets):
        MMD_u^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.
    Defaults as clean-fid and torch-fidelity (100 subsets of 1000)."""
    x, y = _rows(feat_x, "feat_x"), _rows(feat_y, "feat_y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feat_x and feat_y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    for name, v in (("subsets", subsets), ("subset_size", subset_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 rows per set, got {x.shape[0]} and {y.shape[0]}")
    if m == x.shape[0] == y.shape[0]:
        subsets = 1  # every subset would be both whole sets
    d = x.shape[1]
    kernel = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
    # a whole kernel matrix, when it fits, serves every subset by indexing (2000 + 2000 images in
    # 2048-D: 3 matrix products instead of 300)
    whole = [kernel(u, v) if u.shape[0] * v.shape[0] <= KID_MATRIX_ENTRIES else None
             for u, v in ((x, x), (y, y), (x, y))]
    estimates = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        i = torch.randperm(x.shape[0], generator=generator)[:m]
        j = torch.randperm(y.shape[0], generator=generator)[:m]
        kxx, kyy, kxy = (kernel(u[a], v[b]) if w is None else w[a][:, b]
                         for w, u, a, v, b in zip(whole, (x, y, x), (i, j, i), (x, y, y), (i, j, j)))
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        estimates[s] = within - 2 * kxy.mean()
    std = float(estimates.std()) if subsets > 1 else 0.0
    return KID(float(estimates.mean()), std, subsets, m)


def inception_score_of_logits(logits, splits: int = 10) -> InceptionScore:
    """IS = exp(mean_x KL(p(y|x) || p(y))) with p(y|x) = softmax(logits) and p(y) the split's mean
    of p(y|x) (Salimans et al. 2016), on `splits` consecutive equal-as-possible splits."""
    lg = _rows(logits, "logits")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= lg.shape[0]:
        raise ValueError(f"splits must be an int in [1, {lg.shape[0]}] (the number of images), got {splits!r}")
    scores = []
    for part in torch.tensor_split(lg, splits):
        log_p = torch.log_softmax(part, dim=1)
        log_py = torch.logsumexp(log_p, dim=0) - np.log(part.shape[0])
        kl = (log_p.exp() * (log_p - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)), splits)


def manifold_precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> PrecisionRecall:
    """Kynkaanniemi et al. 2019: each set's manifold is the union of balls around its points with
    radius the distance to the point's k-th nearest neighbour in its set; precision is the share
    of fake points inside the real manifold, recall the share of real points inside the fake one."""
    r, f = _rows(real, "real"), _rows(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake must have the same dimension, got {r.shape[1]} and {f.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(r.shape[0], f.shape[0]):
        raise ValueError(f"k must be an int in [1, {min(r.shape[0], f.shape[0]) - 1}] (fewer than each set's "
                         f"size), got {k!r}")
    precision = _inside(f, r, _knn_radii(r, k, chunk), chunk).double().mean()
    recall = _inside(r, f, _knn_radii(f, k, chunk), chunk).double().mean()
    return PrecisionRecall(float(precision), float(recall), k)


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the row itself is the 0-th)."""
    return torch.cat([torch.cdist(x[i:i + chunk], x).kthvalue(k + 1, dim=1).values
                      for i in range(0, x.shape[0], chunk)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius)."""
    return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radii).any(1)
                      for i in range(0, points.shape[0], chunk)])


def _rows(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has NaN or infinite values")
    return t


def image_metrics(fake, reference=None, metrics=METRICS, *, features=None, batch_size: int = 50, device="cpu",
                  progress: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                  pr_k: int = 3, seed: int = 0) -> dict:
    """Several metrics of `fake` (against `reference` for all but "is") from one feature pass per set:
    {"fid": float, "kid": KID, "is": InceptionScore, "pr": PrecisionRecall} for the chosen names.
    KID's subsets are drawn from a torch.Generator seeded with `seed`."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    paired = [m for m in metrics if m != "is"]
    if paired and reference is None:
        raise ValueError(f"{', '.join(paired)} compare against a reference: pass reference=")
    network = None if features is None else load_feature_network(features)
    # both sets are checked before either pass, so a bad reference does not wait for the fake pass
    fake_s = statistics_or_images(fake, network, "is" in metrics, "fake")
    ref_s = statistics_or_images(reference, network, name="reference") if paired else None

    def computed(s, need_logits=False):
        return s if isinstance(s, ImageFeatures) else image_features(
            s, network, batch_size=batch_size, device=device, progress=progress, need_logits=need_logits)
    fake_f = computed(fake_s, "is" in metrics)
    ref_f = computed(ref_s) if paired else None
    if paired:
        check_same_network(fake_f, ref_f)
    out = {}
    for m in metrics:
        if m == "fid":
            out["fid"] = gaussian_frechet_distance(fake_f.mean, fake_f.cov, ref_f.mean, ref_f.cov)
        elif m == "kid":
            out["kid"] = kernel_inception_distance(fake_f.features, ref_f.features, kid_subsets, kid_subset_size,
                                                   torch.Generator().manual_seed(seed))
        elif m == "is":
            out["is"] = inception_score_of_logits(fake_f.logits, is_splits)
        else:
            out["pr"] = manifold_precision_recall(ref_f.features, fake_f.features, pr_k)
    return out


def fid(fake, reference, *, features=None, batch_size: int = 50, device="cpu", progress: bool = True) -> float:
    """Frechet Inception Distance (Heusel et al. 2017) of the two sets' feature Gaussians. Biased
    upward at small N (its expectation falls roughly like 1/N), so compare figures of equal N only."""
    return image_metrics(fake, reference, ("fid",), features=features, batch_size=batch_size, device=device,
                         progress=progress)["fid"]


def kid(fake, reference, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0, features=None,
        batch_size: int = 50, device="cpu", progress: bool = True) -> KID:
    """Kernel Inception Distance (see kernel_inception_distance); unbiased, so usable at small N."""
    return image_metrics(fake, reference, ("kid",), features=features, batch_size=batch_size, device=device,
                         progress=progress, kid_subsets=subsets, kid_subset_size=subset_size, seed=seed)["kid"]


def inception_score(fake, *, splits: int = 10, features=None, batch_size: int = 50, device="cpu",
                    progress: bool = True) -> InceptionScore:
    """Inception Score (see inception_score_of_logits). Needs a network returning (features, logits):
    the FID Inception file has no classifier, so features= must name one."""
    return image_metrics(fake, None, ("is",), features=features, batch_size=batch_size, device=device,
                         progress=progress, is_splits=splits)["is"]


def precision_recall(fake, reference, *, k: int = 3, features=None, batch_size: int = 50, device="cpu",
                     progress: bool = True) -> PrecisionRecall:
    """Improved precision and recall (see manifold_precision_recall), k = 3 as in the paper."""
    return image_metrics(fake, reference, ("pr",), features=features, batch_size=batch_size, device=device,
                         progress=progress, pr_k=k)["pr"]

