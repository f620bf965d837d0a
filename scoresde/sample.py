"""`python -m scoresde.sample`: draw samples from a trained run and save a figure and the raw samples.

    python -m scoresde.sample --checkpoint RUN_DIR_OR_CKPT --method dpmpp_2m --steps 20 --n 64 \
        [--class K [--guidance-scale W]] [--batch-size B] [--device cuda] [--png-dir DIR] --out samples.png

Loads the EMA weights (--no-ema: the raw ones) of the checkpoint (the run's latest when given a run
directory) with the run's own config, or an exported model (`scoresde.save_pretrained`), without the
training data; samples with `scoresde.sampling.sample`, writes a scatter (2-D data) or an image grid
(quantized data) to --out and the samples to the same name with .npz (`samples`; `images`, uint8
(N, C, H, W), for quantized data; `indices`; `labels` when class-conditional). --png-dir writes each
sample as a uint8 PNG named by its index, for outside tools and `python -m scoresde.evaluate --images`.
With --class and --guidance-scale W the score is classifier-free guided, s_uncond + W (s_cond -
s_uncond); with --class alone it is the conditional score.

Seeding, so that neither --batch-size nor the number of processes changes a sample: sample i starts
from its own prior draw x_T (generator seeded by (seed, i)), and the samples are generated in chunks
[k B, (k + 1) B) of --batch-size B whose solver noise (stochastic methods) comes from a generator
seeded by (seed, k). Deterministic methods therefore give the same samples at any batch size;
stochastic ones the same for the same batch size. Under `torchrun --nproc_per_node=P` rank r takes
chunks r, r + P, ... and writes its share to OUT_rank{r}.npz (and its PNGs into the shared
--png-dir): the union equals the one-process run.

--calibrate B first fits the deterministic method's time grid for --steps to this model on B prior
draws (`scoresde.calibrate_schedule`: --calibrate-iterations gradient steps, each on a stratified
minibatch of --calibrate-batch of the B draws), prints the fitted and the best built-in grid's error,
samples on the fitted grid and saves it as `times` in the .npz; --times FILE.npz reuses such a grid
without fitting again.
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

from tqdm import tqdm

from . import distributed
from ._checks import check_device
from .checkpoint import CheckpointError
from .config import MAX_COUNT, MAX_SEED, ConfigError, check_batch_values
from .extras import MissingExtraError, require
from .interop.export import load_saved
from .run import build_dataset
from .sampling import METHODS, ClassifierFreeGuidance, calibrate_schedule, list_samplers, sample


# the reverse SDE: on trained models it beat the probability-flow solvers at every NFE measured
# (docs/benchmarks.md, "Reverse SDE or probability flow on a trained model")
DEFAULT_METHOD, DEFAULT_STEPS = "euler_maruyama", 500


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run directory, ckpt_*.pt file, or a directory written by scoresde.save_pretrained")
    p.add_argument("--method", default=None,
                   help="sampler (default: the run config's [sample] method and steps, else "
                        f"{DEFAULT_METHOD} with {DEFAULT_STEPS} steps): {', '.join(list_samplers())}")
    p.add_argument("--steps", type=int, default=None,
                   help="solver steps (default: the run config's with its method, else the method's own)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (default 64); under torchrun spell it --num-samples, as torchrun "
                        "reads --n as an abbreviation of its own options")
    p.add_argument("--eps", type=float, default=1e-3, help="final time (default 1e-3)")
    p.add_argument("--class", dest="cls", type=int, default=None, help="class label for a class-conditional model")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance weight W")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds sample i's prior draw by (seed, i) and chunk k's solver noise by (seed, k) (default 0)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="samples generated at once (default: all --n); memory grows with B, results do not "
                        "change with it for deterministic methods")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or mps (default cpu); under torchrun 'cuda' means cuda:LOCAL_RANK")
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    p.add_argument("--options", default="{}", help='method options as JSON, e.g. \'{"schedule": "karras"}\'')
    p.add_argument("--calibrate", type=int, default=None, metavar="B",
                   help="fit the time grid to the model on B prior draws first (deterministic methods)")
    p.add_argument("--calibrate-iterations", type=int, default=600, help="gradient steps of the fit (default 600)")
    p.add_argument("--calibrate-batch", type=int, default=None, metavar="b",
                   help="draws in each step's stratified minibatch (default: min(B, 2000))")
    p.add_argument("--times", default=None, metavar="FILE.npz", help="sample on the grid `times` saved by --calibrate")
    p.add_argument("--out", required=True, help="PNG to write; the samples go to the same name with .npz")
    p.add_argument("--png-dir", default=None, metavar="DIR",
                   help="also write each sample as a uint8 PNG DIR/<index>.png (quantized image data only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values that need no checkpoint to be judged, naming the flag and what is allowed."""
    if not 1 <= args.n <= MAX_COUNT:
        raise ValueError(f"--n {args.n} is not allowed: it must be a number of samples in 1..{MAX_COUNT}")
    if args.steps is not None and not 1 <= args.steps <= MAX_COUNT:
        raise ValueError(f"--steps {args.steps} is not allowed: it must be in 1..{MAX_COUNT} (or left out)")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is not allowed: it must be in 0..2**63-1")
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_COUNT:
        raise ValueError(f"--batch-size {args.batch_size} is not allowed: it must be in 1..{MAX_COUNT} (or left out)")
    check_device("--device", args.device)
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
        device = check_device("--device", args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with distributed.process_group(device.type == "cuda") as world:
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", world.local_rank)
        out = _sample_share(args, device, world)
        distributed.barrier()
    return out


def _sample_share(args: argparse.Namespace, device: torch.device, world: distributed.World) -> Path:
    """Sample this process's chunks (all of them in one process) and write them; the output path."""
    try:
        check_args(args)
        # before sampling: the figure needs them (scatter plot: matplotlib; image grid: Pillow)
        require(("matplotlib", "PIL"), "train", "python -m scoresde.sample (its figure)")
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as e:
            raise ValueError(f"--options is not valid JSON ({e}): {args.options!r}") from None
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object of method options, got {args.options!r}")
        if args.method is not None:
            METHODS.get(args.method)  # an unknown name fails here, before the checkpoint is loaded
        run = load_saved(args.checkpoint, not args.no_ema, device)
        if args.method is None:
            args.method, steps = ((run.config.sample.method, run.config.sample.steps) if run.config is not None
                                  else (DEFAULT_METHOD, DEFAULT_STEPS))
            args.steps = steps if args.steps is None else args.steps
        model, spec = run.model, run.data
        check_batch_values("--n", args.n, spec.event_shape)
        if args.cls is not None:
            if model.num_classes is None:
                raise ValueError(f"--class {args.cls}: the model in {run.source} is not class-conditional "
                                 "(leave out --class, or train with model.class_cond=true)")
            if not 0 <= args.cls < model.num_classes:
                raise ValueError(f"--class {args.cls} is not allowed: classes are 0..{model.num_classes - 1}")
        if args.png_dir is not None and (spec.levels is None or len(spec.event_shape) != 3
                                         or spec.event_shape[0] not in (1, 3)):
            raise ValueError(f"--png-dir: the model in {run.source} does not make images (data of shape "
                             f"{spec.event_shape}, levels {spec.levels}); PNGs need quantized (C, H, W) data with "
                             "C = 1 or 3")
        score, guidance = scores(model, args.cls, args.guidance_scale)
        times = None
        if args.times is not None or args.calibrate is not None:
            if "schedule" in options:
                raise ValueError("--calibrate/--times set the schedule: leave it out of --options")
            times = load_times(args.times) if args.times else calibrated_times(args, model, spec, options, device)
            options["schedule"] = times
        indices = share_indices(args.n, args.batch_size or args.n, world)
        x = draw(lambda chunk: score, model.sde, spec.event_shape, indices, method=args.method, steps=args.steps,
                 eps=args.eps, seed=args.seed, batch_size=args.batch_size or args.n, guidance=guidance,
                 options=options, device=device, progress=not args.no_progress)
    except (CheckpointError, ConfigError, ValueError, TypeError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # the figure is a PNG whatever --out says: name it so, and report that
        out = out.with_name(out.name + ".png")
    if world.distributed:
        out = out.with_name(f"{out.stem}_rank{world.rank}{out.suffix}")
    title = f"{run.source.name}: {args.method}, {args.steps or 'default'} steps" + \
        (f", class {args.cls}" if args.cls is not None else "") + \
        (f", guidance {args.guidance_scale}" if args.guidance_scale is not None else "")
    arrays = {"samples": x.numpy(), "indices": indices.numpy()}
    images = spec.to_uint8(x) if spec.levels is not None else None
    if images is not None:
        arrays["images"] = images.numpy()
    if args.cls is not None:
        arrays["labels"] = np.full(len(indices), args.cls, dtype=np.int64)
    if times is not None:
        arrays["times"] = times.numpy()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if len(x) == 0:
            print(f"note: no figure: process {world.rank} has no chunk of --batch-size samples (more processes "
                  "than chunks)", file=sys.stderr)
        elif spec.levels is not None:
            from .data import quantize
            from .figures import image_grid
            image_grid(quantize(x, spec.levels), spec.levels, out, scale=max(1, 64 // spec.event_shape[-1]))
        elif spec.event_shape == (2,) and run.config is not None:
            from .figures import scatter_figure
            scatter_figure(x, heldout_points(run, len(x)), out, title=title)
        else:
            print(f"note: no figure: {run.source} records no data set to draw held-out points from", file=sys.stderr)
        np.savez(out.with_suffix(".npz"), **arrays)
        if args.png_dir is not None:
            write_pngs(images, indices, Path(args.png_dir), args.n)
    except OSError as e:  # a read-only or full disk, a file where a folder should be
        print(f"error: cannot write --out {args.out}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        raise SystemExit(1) from None
    pngs = f" and {len(indices)} PNGs in {args.png_dir}" if args.png_dir is not None else ""
    print(f"wrote {out} and {out.with_suffix('.npz')}{pngs} ({len(indices)} samples, {args.method})")
    return out


def share_indices(n: int, batch_size: int, world: distributed.World) -> torch.Tensor:
    """The sample indices of this process: chunks [k B, (k + 1) B) of 0..n-1 for k = rank, rank + P, ..."""
    chunks = torch.arange(n).split(batch_size)
    mine = chunks[world.rank::world.world_size]
    return torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)


def prior_draws(sde, event_shape, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """x_T of the samples `indices`, on the CPU: sample i drawn by its own generator seeded by
    (seed, 0, i), so its start depends on neither batch nor process."""
    return torch.cat([sde.prior_sampling((1, *event_shape),
                                         generator=torch.Generator().manual_seed(distributed.rank_seed(seed, 0, i)))
                      for i in indices.tolist()])


def draw(score_for, sde, event_shape, indices: torch.Tensor, *, method: str, steps: int | None, eps: float,
         seed: int, batch_size: int, guidance=None, options: dict | None = None, device="cpu",
         progress: bool = True) -> torch.Tensor:
    """The samples `indices` chunk by chunk (module docstring: seeding), float32 on the CPU, with one
    progress bar over the samples; score_for(chunk indices) is the score function of a chunk."""
    out = []
    with tqdm(total=len(indices), unit="sample", disable=not progress, desc=method) as bar:
        for chunk in indices.split(batch_size) if len(indices) else ():
            k = int(chunk[0]) // batch_size
            x_T = prior_draws(sde, event_shape, seed, chunk).to(device)
            gen = torch.Generator(device).manual_seed(distributed.rank_seed(seed, 1, k))
            x = sample(score_for(chunk), sde, method=method, steps=steps, eps=eps, x_T=x_T, generator=gen,
                       guidance=guidance, **(options or {}))
            out.append(x.float().cpu())
            bar.update(len(chunk))
    return torch.cat(out) if out else torch.zeros(0, *event_shape)


def write_pngs(images: torch.Tensor, indices: torch.Tensor, folder: Path, n: int) -> None:
    """images (uint8 (N, C, H, W), C = 1 or 3) as folder/<index>.png, the index zero-padded to n's width."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(n - 1))
    for i, image in zip(indices.tolist(), images):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i:0{width}d}.png")


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


def calibrated_times(args, model, spec, options, device) -> torch.Tensor:
    """Fit the method's grid on args.calibrate prior draws (seed + 1) with the sampling score."""
    score, guidance = scores(model, args.cls, args.guidance_scale)
    if guidance is not None:
        score = guidance.apply(score)
    x_cal = model.sde.prior_sampling((args.calibrate, *spec.event_shape),
                                     generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
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
