"""`python -m scoresde.evaluate`: bits/dim of a trained run on held-out data, or image metrics of its samples.

    python -m scoresde.evaluate --checkpoint runs/digits-... [--split test] [--trace exact]
                                [--method rk4 --steps 8]
    python -m scoresde.evaluate --checkpoint RUN_OR_EXPORT --metrics fid,kid,pr --n 2000 [--device cuda]
    python -m scoresde.evaluate --images DIR_OR_NPZ --data cifar10 --metrics fid

Likelihood (without --metrics). Quantized data (digits, images): the dequantization bound of
`likelihood.bits_per_dim` with the data set's own number of levels, on the [-1, 1] scaling the model
trained on, K = --draws dequantizations per image. Toy sets: the negative log-likelihood in nats/dim
of held-out draws. The EMA weights are used (as for sampling); a class-conditional model is
evaluated as p(x | y) with the true labels. Prints the mean with a 95% confidence interval over the
evaluated samples (mean +- 1.96 SE) and the mean NFE per solve. The solver is adaptive (--method
dopri5, the default, at --rtol/--atol) or a fixed-grid one with --steps (e.g. rk4): a known cost and
no error control, for quick comparisons.

Image metrics (--metrics fid,kid,is,pr; `scoresde.metrics`): --n samples of the run or exported
model (seeded per sample as `python -m scoresde.sample` does, with the run's [sample] method and
steps unless --sampler/--sampler-steps; class-conditional models cycle through the classes), or the
images of --images, against the reference statistics of a data set's split (the run's data set, or
--data), computed once and cached by data set, split and feature network. The features are the FID
Inception's (the `metrics` extra) or those of a TorchScript network (--features). Prints the numbers
and writes them as JSON (--json; default image_metrics.json beside the run or the images).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ._checks import check_device
from .checkpoint import CheckpointError
from .config import MAX_COUNT, MAX_SEED, ConfigError, check_batch_values
from .likelihood import ADAPTIVE_METHODS, FIXED_METHODS, TRACES, bits_per_dim, log_likelihood
from .interop.export import load_saved
from .metrics import METRICS
from .run import build_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.evaluate", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR_OR_CKPT",
                        help="a run directory (its latest checkpoint), a ckpt_*.pt file, or a directory written by "
                             "scoresde.save_pretrained")
    source.add_argument("--images", metavar="DIR_OR_NPZ",
                        help="with --metrics: a folder of PNG/JPEG images or an .npz of uint8 images to score "
                             "instead of a model's samples")
    p.add_argument("--split", default="test", help="data split for data sets with splits (default: test)")
    p.add_argument("--n", type=int, default=0, help="likelihood: evaluate the first n samples (0 = the whole split; "
                                                    "toy sets: 1000 held-out draws); --metrics: generate n "
                                                    "samples (0 = 2000), or score the first n --images (0 = all)")
    p.add_argument("--trace", choices=("auto",) + TRACES, default="auto",
                   help="divergence: exact, hutchinson, or auto (exact up to 64 dimensions)")
    p.add_argument("--probes", choices=("rademacher", "gaussian"), default="rademacher",
                   help="Hutchinson probe distribution (default rademacher)")
    p.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes per solve (default 1)")
    p.add_argument("--draws", type=int, default=1, help="dequantization draws K per image")
    p.add_argument("--batch-size", type=int, default=100,
                   help="samples per likelihood solve, per sampling chunk and per feature batch (default 100)")
    p.add_argument("--method", choices=ADAPTIVE_METHODS + FIXED_METHODS, default="dopri5",
                   help="ODE solver: adaptive (rtol/atol) or fixed-grid (needs --steps); default dopri5")
    p.add_argument("--steps", type=int, default=None, help="steps of a fixed-grid --method (uniform in t)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of an adaptive --method (1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of an adaptive --method (1e-5)")
    p.add_argument("--eps", type=float, default=1e-5, help="time the likelihood's ODE starts at (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="seeds the dequantization noise and the probes")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"image metrics instead of the likelihood, comma-separated from {','.join(METRICS)} "
                        "(is needs a --features network with logits)")
    p.add_argument("--data", default=None, metavar="NAME_OR_CONFIG",
                   help="--metrics: the reference data set, a registered name or a run config .toml "
                        "(default: the run's own)")
    p.add_argument("--data-root", default=None, help="--metrics: where the --data set's files are (its default)")
    p.add_argument("--reference-n", type=int, default=None,
                   help="--metrics: use the first n images of the reference split (default: all)")
    p.add_argument("--features", default=None, metavar="FILE.pt",
                   help="--metrics: a TorchScript feature network (default: the FID Inception of the metrics extra)")
    p.add_argument("--cache-dir", default=None,
                   help="--metrics: where reference statistics are cached (default $SCORESDE_CACHE/metrics or "
                        "~/.cache/scoresde/metrics)")
    p.add_argument("--sampler", default=None, help="--metrics: sampling method (default: the run's sample.method)")
    p.add_argument("--sampler-steps", type=int, default=None,
                   help="--metrics: sampler steps (default: the run's sample.steps)")
    p.add_argument("--json", default=None, metavar="FILE.json",
                   help="--metrics: where to write the numbers (default image_metrics.json beside the run/images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values that need no checkpoint to be judged, naming the flag and what is allowed."""
    for flag, value, lo in (("--n", args.n, 0), ("--batch-size", args.batch_size, 1), ("--draws", args.draws, 1),
                            ("--n-probes", args.n_probes, 1), ("--steps", args.steps, 1)):
        if value is not None and not lo <= value <= MAX_COUNT:
            raise ValueError(f"{flag} {value} is not allowed: it must be in {lo}..{MAX_COUNT}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is not allowed: it must be in 0..2**63-1")
    check_device("--device", args.device)


def evaluate(args: argparse.Namespace) -> dict:
    """Per-sample values, their mean and 95% CI half-width, and the mean NFE per solve."""
    check_args(args)
    run = load_saved(args.checkpoint, not args.no_ema, args.device)
    cfg, model = run.config, run.model
    if cfg is None:
        raise ValueError(f"{args.checkpoint}: this export records no data set (saved from a bare model), so there is "
                         "no held-out data to evaluate on; export the run directory instead")
    if run.data.levels is None:  # continuous (toy) data: fresh held-out draws, no splits, no dequantization
        if args.split != "test":
            raise ValueError(f"--split {args.split!r}: {cfg.data.name!r} is drawn afresh, it has no splits; the "
                             "NLL uses held-out draws (leave out --split)")
        if args.draws != 1:
            raise ValueError(f"--draws {args.draws}: {cfg.data.name!r} is continuous data, there is nothing to "
                             "dequantize (leave out --draws)")
    check_batch_values("--batch-size", args.batch_size, run.data.event_shape)
    ds = build_dataset(cfg, args.split)
    if cfg.train.threads > 0:  # as in training: more threads than cores thrash on shared machines
        torch.set_num_threads(cfg.train.threads)
    levels = getattr(ds, "levels", None)
    if levels is None:
        data = ds.heldout(args.n or 1000, cfg.eval.heldout_seed).to(args.device)
        labels = None
    else:
        n = args.n or len(ds)
        data = ds.values[:n].to(args.device)
        labels = ds.labels[:n].to(args.device) if cfg.model.class_cond else None
    num_dims = data[0].numel()
    trace = args.trace if args.trace != "auto" else ("exact" if num_dims <= 64 else "hutchinson")
    opts = dict(eps=args.eps, rtol=args.rtol, atol=args.atol, method=args.method, steps=args.steps,
                trace=trace, probes=args.probes, n_probes=args.n_probes)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    values, nfe, solves = [], 0, 0
    bar = tqdm(range(0, data.shape[0], args.batch_size), disable=args.no_progress,
               desc=f"{'bits/dim' if levels else 'nll'} ({trace})")
    for i in bar:
        batch = data[i:i + args.batch_size]
        score_fn = model.score_fn(None if labels is None else labels[i:i + args.batch_size])
        if levels is None:
            res = log_likelihood(score_fn, model.sde, batch, generator=gen, **opts)
            values.append(-res.log_p.double().cpu() / num_dims)
            solves += 1
        else:
            res = bits_per_dim(score_fn, model.sde, batch, levels=levels, n_draws=args.draws, generator=gen,
                               **opts)
            values.append(res.bpd.double().cpu())
            solves += args.draws
        nfe += res.nfe
        so_far = torch.cat(values)
        bar.set_postfix(mean=f"{so_far.mean():.4f}", nfe=nfe // solves)
    values = torch.cat(values)
    half = 1.96 * values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"unit": "bits/dim" if levels else "nats/dim (NLL)", "values": values, "mean": values.mean().item(),
            "ci95": half, "n": len(values), "nfe_per_solve": nfe / solves, "trace": trace,
            "draws": args.draws if levels else None, "data": cfg.data.name, "split": args.split}


def metric_names(text: str, features) -> tuple[str, ...]:
    """The --metrics list as names of scoresde.metrics.METRICS; "is" only with a network that has logits."""
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"--metrics {text!r} is not allowed: give a comma-separated list of {', '.join(METRICS)}")
    if "is" in names and features is None:
        raise ValueError("--metrics is: the Inception Score needs class logits, and the default feature network "
                         "(the FID Inception, default_1.pt) has none; pass --features a TorchScript network "
                         "returning (features, logits), or leave out is")
    return names


def reference_data(args: argparse.Namespace, run) -> tuple[str, str | None]:
    """(data set name, root) of the reference: --data (a name or a config file) or the run's config."""
    from .config import load_config

    if args.data is not None:
        if args.data.endswith(".toml"):
            data = load_config(args.data).data
            return data.name, args.data_root or data.root or None
        return args.data, args.data_root
    if run is None or run.config is None:
        raise ValueError("--metrics needs a reference data set: pass --data NAME (or a run config .toml); "
                         + ("--images carry no data set" if run is None else f"{run.source} records none"))
    return run.config.data.name, args.data_root or run.config.data.root or None


def model_images(args: argparse.Namespace, run, n: int) -> torch.Tensor:
    """n uint8 samples of the run's model, seeded per sample like `python -m scoresde.sample`."""
    from .sample import draw

    model, spec = run.model, run.data
    if spec.levels is None:
        raise ValueError(f"--metrics: the model in {run.source} does not make images (data of shape "
                         f"{spec.event_shape}, no levels); image metrics need quantized image data")
    sampling = run.config.sample if run.config is not None else None
    method = args.sampler or (sampling.method if sampling else "dpmpp_2m")
    steps = args.sampler_steps or (sampling.steps if sampling else None)
    eps = sampling.eps if sampling else 1e-3
    labels = None if model.num_classes is None else model.num_classes

    def score_for(chunk):
        return model.score_fn(None if labels is None else (chunk % labels).to(args.device))

    with torch.no_grad():
        x = draw(score_for, model.sde, spec.event_shape, torch.arange(n), method=method, steps=steps, eps=eps,
                 seed=args.seed, batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    return spec.to_uint8(x)


def image_evaluation(args: argparse.Namespace) -> dict:
    """The --metrics numbers of the model's samples or --images against the reference statistics."""
    from .metrics import image_metrics, load_feature_network, reference_statistics

    check_args(args)
    if args.reference_n is not None and not 1 <= args.reference_n <= MAX_COUNT:
        raise ValueError(f"--reference-n {args.reference_n} is not allowed: it must be in 1..{MAX_COUNT}")
    names = metric_names(args.metrics, args.features)
    try:
        network = load_feature_network(args.features)
    except ModuleNotFoundError:
        raise ValueError('--metrics needs the FID Inception network of the metrics extra: pip install -e ".[metrics]" '
                         '(or pip install "scoresde[metrics]"), or pass --features a TorchScript network') from None
    except FileNotFoundError as e:
        raise ValueError(f"--features: {e}") from None
    run = None if args.checkpoint is None else load_saved(args.checkpoint, not args.no_ema, args.device)
    paired = [m for m in names if m != "is"]
    reference, ref_name = None, None
    if paired:
        name, root = reference_data(args, run)
        reference = reference_statistics(name, args.split, root=root, n=args.reference_n, features=network,
                                          cache_dir=args.cache_dir, batch_size=args.batch_size,
                                          device=args.device, progress=not args.no_progress)
        ref_name = f"{name}[{args.split}]"
    if run is None:
        fake, source = (first_images(args.images, args.n) if args.n else args.images), Path(args.images)
    else:
        fake, source = model_images(args, run, args.n or 2000), run.source
    values = image_metrics(fake, reference, names, features=network, batch_size=args.batch_size,
                           device=args.device, progress=not args.no_progress, seed=args.seed)
    out = {"source": str(source), "reference": ref_name, "network": network.identity, "n": values_n(fake)}
    for key, value in values.items():
        out[key] = value._asdict() if hasattr(value, "_asdict") else value
    return out


def first_images(images, n: int) -> torch.Tensor:
    """The first n images (all, if fewer) of a folder or .npz, as a uint8 tensor."""
    from .metrics.image_sources import image_source

    source, out, have = image_source(images, "--images"), [], 0
    for batch in source.batches(min(n, 1000)):
        out.append(batch[:n - have])
        have += out[-1].shape[0]
        if have == n:
            break
    return torch.cat(out)


def values_n(fake) -> int:
    from .metrics.image_sources import image_source

    return image_source(fake).n


def default_json(args: argparse.Namespace) -> Path:
    """image_metrics.json in the run or export directory (a checkpoint file's folder), or
    <images>_metrics.json beside the --images folder or file."""
    if args.images is not None:
        images = Path(args.images)
        return images.with_name(f"{images.stem}_metrics.json")
    path = Path(args.checkpoint)
    return (path if path.is_dir() else path.parent) / "image_metrics.json"


def format_metrics(out: dict) -> str:
    parts = []
    if "fid" in out:
        parts.append(f"FID {out['fid']:.3f}")
    if "kid" in out:
        parts.append(f"KID {out['kid']['mean']:.5f} +- {out['kid']['std']:.5f}")
    if "is" in out:
        parts.append(f"IS {out['is']['mean']:.3f} +- {out['is']['std']:.3f}")
    if "pr" in out:
        parts.append(f"precision {out['pr']['precision']:.4f}, recall {out['pr']['recall']:.4f} (k={out['pr']['k']})")
    against = f" vs {out['reference']}" if out["reference"] else ""
    return f"{out['source']} (n={out['n']}){against}: " + "; ".join(parts)


def main(argv=None) -> dict:
    """The CLI. Exit status: 0 done; 1 the solver failed (non-finite values) or the JSON could not be
    written; 2 a bad argument or checkpoint; 130 interrupted (Ctrl-C), with one line and no traceback."""
    args = parse_args(argv)
    try:
        if args.metrics is None and args.images is not None:
            raise ValueError("--images is scored by image metrics: add --metrics (e.g. --metrics fid)")
        out = evaluate(args) if args.metrics is None else image_evaluation(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (CheckpointError, ConfigError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as err:  # the solver met non-finite values or a vanishing step
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.metrics is not None:
        path = Path(args.json) if args.json else default_json(args)
        print(format_metrics(out))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2) + "\n")
        except OSError as e:
            print(f"error: cannot write --json {path}: {e.strerror or e}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"wrote {path}")
        return out
    extra = f", K={out['draws']} dequantization draws" if out["draws"] else ""
    print(f"{out['data']} {out['split']}: {out['mean']:.4f} +- {out['ci95']:.4f} {out['unit']} "
          f"(95% CI, n={out['n']}{extra}, trace={out['trace']}, NFE {out['nfe_per_solve']:.0f} per solve)")
    return out


if __name__ == "__main__":
    main()
