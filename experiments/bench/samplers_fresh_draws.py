"""The NFE 10 and 20 rows of experiments/bench/samplers.py again, on many more fresh prior draws.

At NFE 10-20 the RMS error over the 1000-2000 draws of samplers.py is set by the few draws whose
trajectory ends near another mode than the exact flow's (in 64-D such a draw's own mean squared
error is 1-2.5, a typical draw's below 1e-4), so its ratios between solvers are noisy. This script
reads the grids that samplers.py fitted ("unipc-2 / unipc / unipc-4 calibrated", from its printed
output, or the outputs of its parts) and measures them, the built-in grids of `unipc` and
the diffusers peers, on --draws fresh prior draws (seed --seed, unseen by the fit and by
samplers.py) against the same exact flow map (dopri8, rtol = atol = 1e-11, then Tweedie). Printed
per solver: RMS error, median per-draw error, and `far`, the number of draws whose own RMS error
exceeds 0.5 (those that ended near another mode). The summary marks, per case and NFE, the order
whose fit reported the lowest error on its own calibration pool: choosing it uses no fresh draw.

    python experiments/bench/samplers.py > samplers.txt
    python experiments/bench/samplers_fresh_draws.py samplers.txt [--draws 64000]
"""

from __future__ import annotations

import argparse
import ast
import re
import time
from pathlib import Path

import torch

from samplers import EPS, ORDER_OF, PEERS, SDES, mixtures, reference, unipc_name
from scoresde.sampling import sample

FAR = 0.5


def fitted_grids(log: str, case: str) -> dict[int, dict[str, tuple[torch.Tensor, float]]]:
    """NFE -> {row name ("unipc-2 calibrated", "unipc calibrated", ...): (grid, its calibration RMS on the
    fit's pool)} as samplers.py printed them for `case` ("2d-ring8 VP", ...)."""
    out = {}
    for name, err, g in re.findall(rf"^{re.escape(case)} +\((unipc(?:-\d)? calibrated):.*calibration RMS (\S+),"
                                   rf".*grid t = (\[[^\]]*\])", log, flags=re.M):
        grid = torch.tensor(ast.literal_eval(g), dtype=torch.float64)
        out.setdefault(len(grid), {})[name] = (grid, float(err))  # steps + 1 = NFE points (the last: Tweedie's)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", help="the printed output of experiments/bench/samplers.py (or of its parts)")
    p.add_argument("--draws", type=int, default=64000)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--mixtures", nargs="+", default=list(mixtures()), help="which cases (default: all)")
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES), help="which SDEs (default: both)")
    p.add_argument("--builtin-orders", type=int, nargs="+", default=[3],
                   help="unipc orders to run on the built-in grids (default 3)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = "\n".join(Path(path).read_text() for path in args.logs)
    summary = []
    for mix_name in args.mixtures:
        mix = mixtures()[mix_name]
        for sde in [SDES[name]() for name in args.sdes]:
            case = f"{mix_name} {type(sde).__name__[:2]}"
            score = mix.score_fn(sde)
            x_T = sde.prior_sampling((args.draws, mix.dim), generator=torch.Generator().manual_seed(args.seed),
                                     dtype=torch.float64)
            t0 = time.perf_counter()
            ref = reference(score, sde, x_T)
            print(f"{case}: {args.draws} draws, reference in {time.perf_counter() - t0:.0f} s", flush=True)
            for nfe, grids in sorted(fitted_grids(log, case).items()):
                runs = [(name, lambda grid=grid, order=ORDER_OF[name]: sample(score, sde, method="unipc", x_T=x_T,
                                                                               eps=EPS, schedule=grid, order=order))
                        for name, (grid, _) in grids.items()]
                runs += [(f"{unipc_name(o)} {s}",
                          lambda s=s, o=o: sample(score, sde, method="unipc", steps=nfe - 1, x_T=x_T, eps=EPS,
                                                  schedule=s, order=o))
                         for o in args.builtin_orders for s in ("log_snr", "uniform_t", "karras")]
                runs += [(name, lambda peer=peer, order=order: peer(score, sde, x_T, nfe, order))
                         for name, peer, order in PEERS]
                rms = {}
                for name, run in runs:
                    per_draw = (run() - ref).pow(2).flatten(1).mean(1)
                    rms[name] = per_draw.mean().sqrt().item()
                    print(f"{case:12s} NFE {nfe:3d} {name:22s} rms {rms[name]:.3e}  median "
                          f"{per_draw.median().sqrt().item():.3e}  far {int((per_draw.sqrt() > FAR).sum()):5d}",
                          flush=True)
                peer = min((r for r in rms if r.startswith("diffusers")), key=rms.get)
                picked = min(grids, key=lambda name: grids[name][1])
                summary += [(case, nfe, name, rms[name], peer, rms[peer], name == picked) for name in grids]
    print(f"\n{'case':12s} {'NFE':>4s} {'grid':>18s} {'RMS':>10s} {'best peer':>30s} {'peer / ours':>12s}"
          f"  (* the order the fits' own pool errors pick, no fresh draw used)")
    for case, nfe, name, ours, peer, theirs, picked in summary:
        print(f"{case:12s} {nfe:4d} {name:>18s} {ours:10.3e} {peer:>20s} {theirs:9.3e} {theirs / ours:12.2f}"
              f"{'  *' if picked else ''}")


if __name__ == "__main__":
    main()
