"""Per-NFE overhead of the fixed-step samplers around a U-Net, measured so that machine load cancels.

    python experiments/bench/sampler_overhead.py [--batch 64] [--nfe 4] [--reps 3]

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
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nfe", type=int, default=4, help="evaluations per sampler run (steps + final Tweedie)")
    p.add_argument("--reps", type=int, default=3, help="alternating-block repetitions (0: bookkeeping only)")
    args = p.parse_args()
    torch.set_num_threads(1)
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
    for name, method, opts in METHODS:
        per_nfe = statistics.median(
            clocked(lambda: sample(lambda x, t: -x, sde, method=method, steps=args.nfe - 1, x_T=x,
                                   generator=torch.Generator().manual_seed(0), **opts))[1]["thread"] / args.nfe
            for _ in range(5))
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
