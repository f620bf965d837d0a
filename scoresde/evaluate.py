"""`python -m scoresde.evaluate`: bits/dim of a trained run on held-out data, through the probability flow.

    python -m scoresde.evaluate --checkpoint runs/digits-... [--split test] [--trace exact]
                                [--method rk4 --steps 8]

Quantized data (digits, images): the dequantization bound of `likelihood.bits_per_dim` with the data
set's own number of levels, on the [-1, 1] scaling the model trained on, K = --draws dequantizations
per image. Toy sets: the negative log-likelihood in nats/dim of held-out draws. The EMA weights are
used (as for sampling); a class-conditional model is evaluated as p(x | y) with the true labels.
Prints the mean with a 95% confidence interval over the evaluated samples (mean +- 1.96 SE) and the
mean NFE per solve. The solver is adaptive (--method dopri5, the default, at --rtol/--atol) or a
fixed-grid one with --steps (e.g. rk4): a known cost and no error control, for quick comparisons.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from tqdm import tqdm

from .checkpoint import CheckpointError
from .config import MAX_COUNT, MAX_SEED, ConfigError, check_batch_values
from .likelihood import ADAPTIVE_METHODS, FIXED_METHODS, TRACES, bits_per_dim, log_likelihood
from .interop.export import load_saved
from .run import build_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_CKPT",
                   help="a run directory (its latest checkpoint), a ckpt_*.pt file, or a directory written by "
                        "scoresde.save_pretrained from a run")
    p.add_argument("--split", default="test", help="data split for data sets with splits (default: test)")
    p.add_argument("--n", type=int, default=0, help="evaluate the first n samples (0 = the whole split; "
                                                    "toy sets: 1000 held-out draws)")
    p.add_argument("--trace", choices=("auto",) + TRACES, default="auto",
                   help="divergence: exact, hutchinson, or auto (exact up to 64 dimensions)")
    p.add_argument("--probes", choices=("rademacher", "gaussian"), default="rademacher")
    p.add_argument("--n-probes", type=int, default=1)
    p.add_argument("--draws", type=int, default=1, help="dequantization draws K per image")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--method", choices=ADAPTIVE_METHODS + FIXED_METHODS, default="dopri5",
                   help="ODE solver: adaptive (rtol/atol) or fixed-grid (needs --steps); default dopri5")
    p.add_argument("--steps", type=int, default=None, help="steps of a fixed-grid --method (uniform in t)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0, help="seeds the dequantization noise and the probes")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values that need no checkpoint to be judged, naming the flag and what is allowed."""
    for flag, value, lo in (("--n", args.n, 0), ("--batch-size", args.batch_size, 1), ("--draws", args.draws, 1),
                            ("--n-probes", args.n_probes, 1), ("--steps", args.steps, 1)):
        if value is not None and not lo <= value <= MAX_COUNT:
            raise ValueError(f"{flag} {value} is not allowed: it must be in {lo}..{MAX_COUNT}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is not allowed: it must be in 0..2**63-1")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a device: use 'cpu' or 'cuda[:N]' ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device!r} is not allowed: use 'cpu' or 'cuda[:N]'")


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


def main(argv=None) -> dict:
    """The CLI. Exit status: 0 done; 1 the solver failed (non-finite values); 2 a bad argument or
    checkpoint; 130 interrupted (Ctrl-C), with one line and no traceback."""
    args = parse_args(argv)
    try:
        out = evaluate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (CheckpointError, ConfigError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as err:  # the solver met non-finite values or a vanishing step
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    extra = f", K={out['draws']} dequantization draws" if out["draws"] else ""
    print(f"{out['data']} {out['split']}: {out['mean']:.4f} +- {out['ci95']:.4f} {out['unit']} "
          f"(95% CI, n={out['n']}{extra}, trace={out['trace']}, NFE {out['nfe_per_solve']:.0f} per solve)")
    return out


if __name__ == "__main__":
    main()
