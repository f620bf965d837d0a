"""End-of-run evaluation: a samples figure and sample-quality numbers chosen by what the data is.

* Data with a held-out sampler (fresh draws of a continuous distribution): SW2 and MMD against a
  held-out draw, with the noise floor of further held-out draws; a scatter figure for 2-D points.
* Quantized images: an image grid; the Frechet distance in the features of a classifier trained
  on data of this shape and number of levels, when one is available (the digits classifier,
  experiments/digits_classifier.py); the held-out bits/dim when eval.bpd_n > 0; the FID of
  eval.fid_n samples against the test split (cached reference statistics, `scoresde.metrics`) when
  eval.fid_n > 0 and the metrics extra is installed. Off by default: the Inception runs at 299 x 299,
  about 1.3 s per image on one core of a shared 2-core machine (median of 3 passes of 20 images),
  so even n = 1000 adds tens of minutes to a small run.
* Labelled data with a class-conditional model: samples cycle through the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import center, quantize
from .run import DataSpec, build_dataset


def generate(model, cfg: Config, spec: DataSpec, n: int, y: torch.Tensor | None = None,
             device="cpu", progress: bool = False) -> torch.Tensor:
    """n samples from `model` (a ScoreModel with its SDE) with the [sample] settings, seeded by
    sample.seed; a progress bar over the solver's steps when `progress`."""
    from .sampling import sample

    s = cfg.sample
    gen = torch.Generator(device).manual_seed(s.seed)
    sde = model.sde  # the model's own copy: a learned schedule is averaged with the network by the EMA
    x_T = sde.prior_sampling((n, *spec.event_shape), generator=gen, device=device)
    with torch.no_grad():
        return sample(model.score_fn(y), sde, method=s.method, steps=s.steps, eps=s.eps, x_T=x_T, generator=gen,
                      progress=progress)


def evaluate_run(cfg: Config, model, dataset, run_dir: Path, device="cpu", progress: bool = False
                 ) -> tuple[dict, list[str]]:
    """Samples figure and the sample-quality numbers (module docstring) of `model` (the EMA model)
    trained on `dataset`; returns the metrics and the summary's parts. `progress`: bars over the
    sampling, the FID and the bits/dim, the long parts."""
    spec = DataSpec.of(dataset)
    n = cfg.sample.n
    y = None
    if cfg.model.class_cond:
        y = torch.arange(n, device=device) % spec.num_classes
    samples = generate(model, cfg, spec, n, y, device, progress).float().cpu()
    metrics: dict = {"nonfinite_samples": int((~torch.isfinite(samples.flatten(1))).any(1).sum())}
    parts: list[str] = []
    if hasattr(dataset, "heldout"):
        metrics.update(point_metrics(samples, dataset, cfg.eval.heldout_seed))
        if spec.event_shape == (2,):
            from .figures import scatter_figure
            scatter_figure(samples, dataset.heldout(n, cfg.eval.heldout_seed), run_dir / "samples.png",
                           title=f"{cfg.name}: {cfg.data.name}, {cfg.sde.name} SDE, {cfg.sample.method} "
                                 f"{cfg.sample.steps} steps")
        parts.append(f"SW2 {metrics['sw2']:.4f} (noise floor {metrics['sw2_floor']:.4f}, "
                     f"{min(metrics['sw2_floor_draws']):.4f}..{max(metrics['sw2_floor_draws']):.4f})")
        parts.append(f"MMD {metrics['mmd']:.1e} (noise floor {metrics['mmd_floor']:.1e}, "
                     f"{min(metrics['mmd_floor_draws']):.1e}..{max(metrics['mmd_floor_draws']):.1e})")
    if spec.levels is not None:
        from .figures import image_grid
        values = quantize(samples, spec.levels)
        image_grid(values[:100], spec.levels, run_dir / "samples.png", nrow=10,
                   scale=max(1, 64 // spec.event_shape[-1]))
        features = feature_network(spec, cfg.eval.classifier)
        if features is not None:
            fd = classifier_fd(values, features, spec, dataset, build_dataset(cfg, "test"))
            metrics.update(fd)
            parts.append(f"FD {fd['fd']:.2f} (train data: {fd['fd_floor']:.2f}; n={fd['fd_n']} vs "
                         f"{fd['fd_reference_n']} test)")
        elif feature_network_exists_for(spec):
            parts.append(f"FD skipped: no classifier at {cfg.eval.classifier} "
                         "(train it with experiments/digits_classifier.py)")
        if cfg.eval.fid_n > 0:
            m = cfg.eval.fid_n
            if m > n:  # more samples than the figure's: draw them afresh, classes cycling as above
                y_fid = torch.arange(m, device=device) % spec.num_classes if cfg.model.class_cond else None
                samples_fid = generate(model, cfg, spec, m, y_fid, device, progress).float().cpu()
            else:
                samples_fid = samples[:m]
            fid, part = summary_fid(spec.to_uint8(samples_fid), cfg, device, progress)
            metrics.update(fid)
            parts.append(part)
        if cfg.eval.bpd_n > 0:
            bpd = heldout_bits_per_dim(model, build_dataset(cfg, "test"), cfg.eval.bpd_n, device, progress)
            if bpd is not None:
                metrics["test_bpd"] = bpd
                parts.append(f"test bits/dim {bpd:.3f}")
    if metrics["nonfinite_samples"]:
        parts.append(f"{metrics['nonfinite_samples']} NON-FINITE SAMPLES")
    return metrics, parts


def summary_fid(images: torch.Tensor, cfg: Config, device="cpu", progress: bool = False) -> tuple[dict, str]:
    """FID of uint8 `images` against the cached statistics of the run's test split in the FID
    Inception's features, and its summary part; ({}, the reason) when it cannot be computed (no
    metrics extra, no test split), so that a finished run is never lost to its evaluation."""
    from .metrics import fid, reference_statistics

    try:
        reference = reference_statistics(cfg.data.name, "test", root=cfg.data.root or None, device=device,
                                         progress=False)
        value = fid(images, reference, device=device, progress=progress)
    except ModuleNotFoundError:
        return {}, 'FID skipped: the FID Inception is not installed (pip install -e ".[metrics]")'
    except (FileNotFoundError, ValueError) as e:
        return {}, f"FID skipped: {e}"
    return {"fid": value, "fid_n": images.shape[0]}, f"FID {value:.2f} (n={images.shape[0]} vs {cfg.data.name} test)"


def point_metrics(samples: torch.Tensor, dataset, heldout_seed: int, n_floor: int = 5) -> dict:
    """SW2 and MMD of samples against held-out draw A (seed heldout_seed), and the noise floor: the
    same numbers for n_floor further held-out draws (seeds heldout_seed + 1, ...) against A, whose
    mean is reported (with n = 2000 on ring8 a single draw's SW2 ranges over 0.09 .. 0.18)."""
    from .metrics import mmd, sliced_wasserstein

    n = samples.shape[0]
    a = dataset.heldout(n, heldout_seed)
    d2 = torch.cdist(a.double(), a.double()).pow(2)
    med = float(d2[d2 > 0].median().sqrt())
    # fixed from held-out data so all MMDs are comparable; the small ones resolve modes and edges
    bandwidths = [0.1 * med, 0.3 * med, med]

    def both(x):
        sw = sliced_wasserstein(x, a, n_projections=512, generator=torch.Generator().manual_seed(0))
        return sw, mmd(x, a, bandwidths)

    sw2, mmd2 = both(samples[torch.isfinite(samples).all(1)])
    floors = [both(dataset.heldout(n, heldout_seed + k)) for k in range(1, n_floor + 1)]
    return {"sw2": sw2, "mmd": mmd2, "sw2_floor": float(np.mean([f[0] for f in floors])),
            "mmd_floor": float(np.mean([f[1] for f in floors])), "sw2_floor_draws": [f[0] for f in floors],
            "mmd_floor_draws": [f[1] for f in floors]}


def feature_network_exists_for(spec: DataSpec) -> bool:
    """Whether scoresde has a feature network for images of this shape and number of levels: the
    digits classifier, for 8 x 8 grey images of 17 levels."""
    from .data import DIGITS_LEVELS

    return spec.event_shape == (1, 8, 8) and spec.levels == DIGITS_LEVELS


def feature_network(spec: DataSpec, classifier_path: str):
    """The feature network for this data (`feature_network_exists_for`) loaded from classifier_path,
    or None when there is none for its shape or the file is missing."""
    from .data.digits_features import load_digits_features

    path = Path(classifier_path)
    if not feature_network_exists_for(spec) or not path.is_file():
        return None
    return load_digits_features(path)


def classifier_fd(values: torch.Tensor, net, spec: DataSpec, train, test) -> dict:
    """Frechet distance in the classifier's features: n samples vs the test set, and n train images
    vs the same test set as the reference (FD's finite-sample bias depends on n, so both use the
    same n; use sample.n = the train size: on digits at n = 180 the bias of two test halves alone is
    ~44, against 6.5 for all 1437 train vs the 360 test digits)."""
    from .metrics import frechet_distance

    n = min(values.shape[0], len(train))
    train_values = train.values[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]]
    with torch.no_grad():
        ft, fr, fs = (net.features(center(v, spec.levels)) for v in (test.values, train_values, values[:n]))
    return {"fd": frechet_distance(fs, ft), "fd_floor": frechet_distance(fr, ft), "fd_n": n,
            "fd_reference_n": len(test)}


def heldout_bits_per_dim(model, heldout, n: int, device="cpu", progress: bool = False,
                         chunk: int = 8) -> float | None:
    """Mean bits/dim of the first n held-out images (one dequantization draw per image) via the
    probability-flow likelihood of `model` (a ScoreModel with its SDE); None without torchdiffeq.
    The images go through the ODE `chunk` at a time, with a progress bar over them when `progress`
    (each image's error is controlled on its own, so chunking changes a result only within tolerance:
    16 digits in chunks of 4 and of 16 agree to 1e-7 relative)."""
    from tqdm import tqdm

    try:
        from .likelihood import bits_per_dim
    except ImportError:
        return None
    v = heldout.values[:n].to(device)
    trace = "exact" if v[0].numel() <= 64 else "hutchinson"
    gen = torch.Generator(device).manual_seed(0)
    bpd = []
    with tqdm(total=len(v), unit="image", desc="bits/dim", disable=not progress) as bar:
        for part in v.split(chunk):
            res = bits_per_dim(model.score_fn(), model.sde, part, levels=heldout.levels, trace=trace, generator=gen)
            bpd.append(res.bpd.double())
            bar.update(len(part))
    return float(torch.cat(bpd).mean())
