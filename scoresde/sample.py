"""`python -m scoresde.sample`: draw samples from a trained run and save a figure and the raw samples.

    python -m scoresde.sample --checkpoint RUN_DIR_OR_CKPT --method dpmpp_2m --steps 20 --n 64 \
        [--class K [--guidance-scale W]] --out samples.png

Loads the EMA weights of the checkpoint (the run's latest when given a run directory) with the run's
own config, or an exported model (`scoresde.save_pretrained`), without the training data; samples
with `scoresde.sampling.sample`, writes a scatter (2-D data) or an image grid (quantized data) to
--out and the samples to the same name with .npz (`samples`, and `labels` when class-conditional).
With --class and --guidance-scale W the score is classifier-free guided, s_uncond + W (s_cond -
s_uncond); with --class alone it is the conditional score.

--calibrate B first fits the deterministic method's time grid for --steps to this model on B prior
draws (`scoresde.calibrate_schedule`: --calibrate-iterations gradient steps, each on a stratified
minibatch of --calibrate-batch of the B draws), prints the fitted and the best built-in grid's error, samples on the fitted grid and saves it as `times` in the .npz;
--times FILE.npz reuses such a grid without fitting again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError
from .config import MAX_COUNT, MAX_SEED, ConfigError, check_batch_values
from .interop.export import load_saved
from .run import build_dataset
from .sampling import METHODS, ClassifierFreeGuidance, calibrate_schedule, list_samplers, sample


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run directory, ckpt_*.pt file, or a directory written by scoresde.save_pretrained")
    p.add_argument("--method", default="dpmpp_2m", help=f"sampler (default dpmpp_2m): {', '.join(list_samplers())}")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the method's own)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--eps", type=float, default=1e-3, help="final time (default 1e-3)")
    p.add_argument("--class", dest="cls", type=int, default=None, help="class label for a class-conditional model")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance weight W")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", default="{}", help='method options as JSON, e.g. \'{"schedule": "karras"}\'')
    p.add_argument("--calibrate", type=int, default=None, metavar="B",
                   help="fit the time grid to the model on B prior draws first (deterministic methods)")
    p.add_argument("--calibrate-iterations", type=int, default=600, help="gradient steps of the fit (default 600)")
    p.add_argument("--calibrate-batch", type=int, default=None, metavar="b",
                   help="draws in each step's stratified minibatch (default: min(B, 2000))")
    p.add_argument("--times", default=None, metavar="FILE.npz", help="sample on the grid `times` saved by --calibrate")
    p.add_argument("--out", required=True, help="PNG to write; the samples go to the same name with .npz")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values that need no checkpoint to be judged, naming the flag and what is allowed."""
    if not 1 <= args.n <= MAX_COUNT:
        raise ValueError(f"--n {args.n} is not allowed: it must be a number of samples in 1..{MAX_COUNT}")
    if args.steps is not None and not 1 <= args.steps <= MAX_COUNT:
        raise ValueError(f"--steps {args.steps} is not allowed: it must be in 1..{MAX_COUNT} (or left out)")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is not allowed: it must be in 0..2**63-1")
    if args.calibrate is not None:
        if not 1 <= args.calibrate <= MAX_COUNT:
            raise ValueError(f"--calibrate {args.calibrate} is not allowed: it must be a number of draws in "
                             f"1..{MAX_COUNT}")
        if args.steps is None:
            raise ValueError("--calibrate needs --steps: a grid is fitted for one step count")
        if args.times is not None:
            raise ValueError("--calibrate and --times exclude each other: fit a grid or reuse one")
        if args.calibrate_iterations < 1:
            raise ValueError(f"--calibrate-iterations {args.calibrate_iterations} is not allowed: it must be "
                             "a positive number of gradient steps")
    if args.calibrate_batch is not None:
        if args.calibrate is None:
            raise ValueError("--calibrate-batch needs --calibrate B (the pool it is drawn from)")
        if not 1 <= args.calibrate_batch <= args.calibrate:
            raise ValueError(f"--calibrate-batch {args.calibrate_batch} is not allowed: it must lie in "
                             f"1..{args.calibrate} (--calibrate)")
    if args.guidance_scale is not None:
        if args.cls is None:
            raise ValueError("--guidance-scale needs --class K (the class to guide towards)")
        if not math.isfinite(args.guidance_scale) or args.guidance_scale < 0:
            raise ValueError(f"--guidance-scale {args.guidance_scale} is not allowed: it must be a finite "
                             "number >= 0 (0 unconditional, 1 the conditional score, > 1 stronger guidance)")


def main(argv=None) -> Path:
    """The CLI. Exit status: 0 done; 1 the output could not be written; 2 a bad argument or
    checkpoint; 130 interrupted (Ctrl-C), with one line and no traceback."""
    args = parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _main(args: argparse.Namespace) -> Path:
    try:
        check_args(args)
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as e:
            raise ValueError(f"--options is not valid JSON ({e}): {args.options!r}") from None
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object of method options, got {args.options!r}")
        METHODS.get(args.method)  # an unknown name fails here, before the checkpoint is loaded
        run = load_saved(args.checkpoint)
        model, spec = run.model, run.data
        check_batch_values("--n", args.n, spec.event_shape)
        if args.cls is not None:
            if model.num_classes is None:
                raise ValueError(f"--class {args.cls}: the model in {run.source} is not class-conditional "
                                 "(leave out --class, or train with model.class_cond=true)")
            if not 0 <= args.cls < model.num_classes:
                raise ValueError(f"--class {args.cls} is not allowed: classes are 0..{model.num_classes - 1}")
        y = None if args.cls is None else torch.full((args.n,), args.cls, dtype=torch.long)
        score, guidance = scores(model, args.cls, args.guidance_scale)
        times = None
        if args.times is not None or args.calibrate is not None:
            if "schedule" in options:
                raise ValueError("--calibrate/--times set the schedule: leave it out of --options")
            times = load_times(args.times) if args.times else calibrated_times(args, model, spec, options)
            options["schedule"] = times
        gen = torch.Generator().manual_seed(args.seed)
        x = sample(score, model.sde, (args.n, *spec.event_shape), method=args.method, steps=args.steps,
                   eps=args.eps, generator=gen, guidance=guidance, progress=not args.no_progress, **options)
    except (CheckpointError, ConfigError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # the figure is a PNG whatever --out says: name it so, and report that
        out = out.with_name(out.name + ".png")
    x = x.float().cpu()
    title = f"{run.source.name}: {args.method}, {args.steps or 'default'} steps" + \
        (f", class {args.cls}" if args.cls is not None else "") + \
        (f", guidance {args.guidance_scale}" if args.guidance_scale is not None else "")
    arrays = {"samples": x.numpy()}
    if y is not None:
        arrays["labels"] = y.numpy()
    if times is not None:
        arrays["times"] = times.numpy()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if spec.levels is not None:
            from .data import quantize
            from .figures import image_grid
            image_grid(quantize(x, spec.levels), spec.levels, out, scale=max(1, 64 // spec.event_shape[-1]))
        elif spec.event_shape == (2,) and run.config is not None:
            from .figures import scatter_figure
            scatter_figure(x, heldout_points(run, args.n), out, title=title)
        else:
            print(f"note: no figure: {run.source} records no data set to draw held-out points from", file=sys.stderr)
        np.savez(out.with_suffix(".npz"), **arrays)
    except OSError as e:  # a read-only or full disk, a file where a folder should be
        print(f"error: cannot write --out {args.out}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {out} and {out.with_suffix('.npz')} ({args.n} samples, {args.method})")
    return out


def scores(model, cls, guidance_scale):
    """(score_fn, guidance) for batches of any size: unconditional, class-conditional, or CFG-guided."""
    if cls is None:
        return model.score_fn(None), None

    def conditional(x, t):
        return model.score(x, t, torch.full((x.shape[0],), cls, dtype=torch.long, device=x.device))

    if guidance_scale is None:
        return conditional, None
    return model.score_fn(None), ClassifierFreeGuidance(conditional, guidance_scale)


def heldout_points(run, n: int) -> torch.Tensor:
    """n held-out draws of the run's 2-D data set (drawn afresh, no files read) for the figure."""
    return build_dataset(run.config, "train").heldout(n, run.config.eval.heldout_seed)


def calibrated_times(args, model, spec, options) -> torch.Tensor:
    """Fit the method's grid on args.calibrate prior draws (seed + 1) with the sampling score."""
    score, guidance = scores(model, args.cls, args.guidance_scale)
    if guidance is not None:
        score = guidance.apply(score)
    x_cal = model.sde.prior_sampling((args.calibrate, *spec.event_shape),
                                     generator=torch.Generator().manual_seed(args.seed + 1))
    fit = calibrate_schedule(score, model.sde, x_cal, method=args.method, steps=args.steps, eps=args.eps,
                             iterations=args.calibrate_iterations, batch=args.calibrate_batch,
                             generator=torch.Generator().manual_seed(args.seed + 2),
                             progress=not args.no_progress, **options)
    print(f"calibrated {args.method} ({args.steps} steps) on {args.calibrate} draws in {fit.iterations} iterations: "
          f"RMS {fit.error:.4g} against the reference flow, {fit.start} grid {fit.start_error:.4g}")
    return fit.times


def load_times(path: str) -> torch.Tensor:
    """The `times` array of an .npz written by --calibrate."""
    try:
        with np.load(path) as f:
            return torch.from_numpy(f["times"]).to(torch.float64)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--times {path}: cannot read a `times` array from it ({e})") from None


class _CallableModule(types.ModuleType):
    """`scoresde.sample` names both the sampling function and this CLI module. Importing the module
    rebinds the package attribute to it, so the module forwards calls: `scoresde.sample(score_fn,
    sde, ...)` means `scoresde.sampling.sample` whether or not this module was imported."""

    def __call__(self, *args, **kwargs):
        return sample(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
