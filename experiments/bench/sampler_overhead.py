"""Per-NFE overhead of the fixed-step samplers around a U-Net, measured so that machine load cancels.

    python experiments/bench/sampler_overhead.py [--batch 64] [--nfe 4] [--reps 3]
    python experiments/bench/sampler_overhead.py --against OTHER_CHECKOUT [--rounds 5]

Overhead ratio = (time of a sampler run / its NFE) / (time of one bare network forward). On a shared
machine wall time swings with other processes, so:
* one torch thread, and CPU time of this thread (`time.thread_time`) and process (`process_time`)
  besides wall time: CPU time is what this process itself spent, whatever else runs;
* blocks alternate: `nfe` bare forwards, then one sampler run of `nfe` evaluations, per method per
  repetition, so each sampler is compared with forwards measured next to it;
* the reported ratio is the median over repetitions of (sampler per NFE) / (adjacent forwards' median).
Those ratios resolve about +-5% per repetition on a loaded machine. A second, finer estimate times the
solvers alone: each sampler with a free score (-x, one elementwise op) on the same batch, whose CPU
time per NFE is the sampler's own bookkeeping; 1 + that / the forward's CPU time is the ratio.
The score is the U-Net's epsilon turned into a score, -eps / sigma(t): that division and every
solver update count as the sampler's overhead, the network call alone as the forward.

With the free score, a solver's time at this size is its elementwise passes over the batch and
the page faults of their temporaries: glibc returns blocks of this size to the system when freed,
and with MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 in the environment
the same runs took 40-60% less. Compare versions under the same allocator settings.

--against DIR compares the free-score figures of this checkout's scoresde with those of the one in
DIR (e.g. a copy of an earlier commit), side by side: `rounds` alternating subprocess runs of each,
the median per method of each run's median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from scoresde.models import UNet
from scoresde.sampling import sample
from scoresde.sdes import VPSDE

METHODS = [("ddim", "ddim", {}), ("dpmpp_2m", "dpmpp_2m", {}), ("dpmpp_3m", "dpmpp_3m", {}),
           ("unipc", "unipc", {}), ("euler_maruyama", "euler_maruyama", {}), ("ancestral", "ancestral", {}),
           ("ode euler (torchdiffeq)", "ode", {"solver": "euler"})]
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time, "process": time.process_time}


def clocked(fn):
    """fn() and the seconds it took on each clock."""
    start = {k: c() for k, c in CLOCKS.items()}
    out = fn()
    return out, {k: c() - start[k] for k, c in CLOCKS.items()}


def free_score_per_nfe(sde, x, nfe: int, runs: int) -> dict[str, float]:
    """Thread CPU seconds per NFE of each method with the free score -x, median of `runs` runs."""
    out = {}
    for name, method, opts in METHODS:
        def run():
            return sample(lambda x, t: -x, sde, method=method, steps=nfe - 1, x_T=x,
                          generator=torch.Generator().manual_seed(0), **opts)

        run()
        out[name] = statistics.median(clocked(run)[1]["thread"] / nfe for _ in range(runs))
    return out


def compare(other: str, rounds: int, batch: int, nfe: int) -> None:
    """Alternate subprocess runs of the free-score measurement on `other`'s scoresde and this one's."""
    versions = {"other": str(Path(other).resolve()), "this": str(Path(__file__).resolve().parents[2])}
    figures = {label: {} for label in versions}
    for _ in range(rounds):
        for label, root in versions.items():
            lines = subprocess.run([sys.executable, __file__, "--free-only", "--batch", str(batch), "--nfe", str(nfe)],
                                   env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
                                   capture_output=True, text=True, check=True).stdout.splitlines()
            assert lines[0] == f"scoresde from {root}", (lines[0], root)
            for line in lines[1:]:
                name, ms = line.rsplit(" ", 1)
                figures[label].setdefault(name, []).append(float(ms))
    print(f"free score (-x), batch {batch}x3x32x32, NFE {nfe}, 1 thread: thread CPU ms/NFE, median of "
          f"{rounds} alternating runs (each a median of 7)\nother = {versions['other']}\nthis = {versions['this']}")
    print(f"{'method':26s} {'other':>8s} {'this':>8s} {'other/this':>11s}")
    for name in figures["this"]:
        a, b = statistics.median(figures["other"][name]), statistics.median(figures["this"][name])
        print(f"{name:26s} {a:8.3f} {b:8.3f} {a / b:11.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nfe", type=int, default=4, help="evaluations per sampler run (steps + final Tweedie)")
    p.add_argument("--reps", type=int, default=3, help="alternating-block repetitions (0: bookkeeping only)")
    p.add_argument("--against", metavar="DIR", help="compare the free-score figures with the scoresde in DIR")
    p.add_argument("--rounds", type=int, default=5, help="alternating runs of each version with --against")
    p.add_argument("--free-only", action="store_true", help="print only the free-score figures (used by --against)")
    args = p.parse_args()
    if args.against:
        return compare(args.against, args.rounds, args.batch, args.nfe)
    torch.set_num_threads(1)
    if args.free_only:
        import scoresde
        print(f"scoresde from {Path(scoresde.__file__).parents[1]}")
        x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        for name, sec in free_score_per_nfe(VPSDE(), x, args.nfe, 7).items():
            print(f"{name} {sec * 1e3:.4f}")
        return
    torch.manual_seed(0)
    net = UNet(3, 32, ch=64).eval()
    sde = VPSDE()
    x = torch.randn(args.batch, 3, 32, 32)
    t_mid = torch.full((args.batch,), 0.5)

    def score(x, t):
        return -net(x, t) / sde.sigma(t.double()).to(x.dtype)[:, None, None, None]

    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"UNet(3, 32, ch=64), batch {args.batch}, {args.nfe} NFE a run, {args.reps} repetitions")
    with torch.no_grad():
        net(x, t_mid)  # warm-up
    with torch.no_grad():
        fwd_cpu = statistics.median(clocked(lambda: net(x, t_mid))[1]["thread"] for _ in range(3))
    print(f"\nsolver bookkeeping alone (score -x), thread CPU time per NFE, median of 5 runs; forward "
          f"{fwd_cpu:.3f} s CPU")
    for name, per_nfe in free_score_per_nfe(sde, x, args.nfe, 5).items():
        print(f"{name:26s} {per_nfe * 1e3:8.2f} ms/NFE   ratio 1 + {per_nfe / fwd_cpu:.4f}")
    print()
    ratios = {name: {k: [] for k in CLOCKS} for name, _, _ in METHODS}
    forward = {k: [] for k in CLOCKS}
    for rep in range(args.reps):
        for name, method, opts in METHODS:
            with torch.no_grad():
                fwd = [clocked(lambda: net(x, t_mid))[1] for _ in range(args.nfe)]
            (_, info), took = clocked(lambda: sample(score, sde, method=method, steps=args.nfe - 1, x_T=x,
                                                     generator=torch.Generator().manual_seed(rep),
                                                     return_info=True, **opts))
            assert info.nfe == args.nfe, (name, info.nfe)
            for k in CLOCKS:
                f = statistics.median(d[k] for d in fwd)
                forward[k].append(f)
                ratios[name][k].append(took[k] / info.nfe / f)
            print(f"rep {rep} {name:24s} " + "  ".join(
                f"{k} {took[k] / info.nfe:6.3f} s/NFE / fwd {statistics.median(d[k] for d in fwd):6.3f} s"
                for k in CLOCKS), flush=True)
    if args.reps == 0:
        return
    print("\nforward median: " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in forward.items()))
    print(f"{'method':26s} " + " ".join(f"{k + ' ratio':>14s}" for k in CLOCKS) + "   (median over reps; min-max)")
    for name, r in ratios.items():
        print(f"{name:26s} " + " ".join(f"{statistics.median(r[k]):14.3f}" for k in CLOCKS) + "   " +
              "  ".join(f"{k} {min(r[k]):.3f}-{max(r[k]):.3f}" for k in CLOCKS))


if __name__ == "__main__":
    main()
