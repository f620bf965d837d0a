"""Sampler benchmark: NFE, wall time and error of every method on exact Gaussian-mixture scores,
beside diffusers' DPM-Solver++ (2M, 3M) and UniPC (2, 3) driven by the same score function.
(The per-NFE overhead around a U-Net is experiments/bench/sampler_overhead.py.)

    python experiments/bench/samplers.py [--quick] [--plot docs/samplers_error_vs_nfe.png]

Parts can run side by side (--mixtures 64d-mix8 --sdes VE > ve.txt, ...) and be summarized and
plotted together afterwards: samplers.py --from-logs 2d.txt vp.txt ve.txt --plot FILE.png.

Cases: 2-D ring of 8 Gaussians and a 64-D mixture of 8 (random means), under VP and VE.
Deterministic solvers: RMS error (over samples and coordinates) of the final denoised sample
against the exact map x_T -> x0_hat, i.e. a dopri8 solve of the probability-flow ODE at rtol =
atol = 1e-11 to eps = 1e-3 followed by the Tweedie step, from the same x_T (float64).
Besides that RMS (the figure of merit) the median of the per-sample RMS errors is printed: in 64-D
a few samples near a boundary between components end in the wrong one and dominate the RMS.
Stochastic samplers: sliced-Wasserstein distance to true draws (its noise floor, two true draws,
is printed). NFE counts every score evaluation, the final denoising step included.

The peer (`pip install scoresde[bench]` brings diffusers) is EDMDPMSolverMultistepScheduler, DPM-
Solver++ in EDM's sigma space: any kernel SDE's probability-flow ODE is EDM's ODE in x~ = x/alpha,
sigma~ = sigma/alpha, with denoiser D(x~, sigma~) = x0_hat(alpha x~, t(sigma~)); its Karras grid
runs from sigma~(T) to sigma~(eps) and its last step (to sigma~ = 0) returns D, so N scheduler
steps are N score evaluations, like our N - 1 steps plus the final Tweedie step.
The second peer is diffusers' UniPCMultistepScheduler (bh2, data prediction, lower-order final
steps) on the same Karras grid: it works in VP coordinates x_vp = x~ / sqrt(1 + sigma~^2), in which
every kernel SDE's flow is again the same ODE; its sigmas are set to that grid (diffusers has no
EDM variant of UniPC), with the model output D (prediction_type "sample").

"unipc calibrated" is `unipc` on a grid fitted by `scoresde.calibrate_schedule` (--calibrate-nfes,
default 10 and 20) to a separate pool of --calibration-pool prior draws (seed 11; the measured x_T
use seed 1): --calibration-iterations gradient steps, each on a stratified minibatch of
--calibration-samples of them, against the pool's reference (unipc on 200 log-SNR steps, computed
once per case); its fitting time is printed. "unipc-2 calibrated" and "unipc-4 calibrated" are the
same for predictor orders 2 and 4 (--calibrate-orders). The summary's "calibrated" column is the
best of them. As an ablation, "ablation: diffusers
unipc_3 on our grid" runs the UniPC peer on the order-3 fitted grid (not counted as a peer: the grid is
ours, fitted for our solver).
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import time
from pathlib import Path

import torch
from torchdiffeq import odeint

from scoresde.analytic import GaussianMixture
from scoresde.metrics import sliced_wasserstein
from scoresde.sampling import calibrate_schedule, sample, tweedie_denoise
from scoresde.sampling.calibration import fine_grid_reference
from scoresde.sdes import VESDE, VPSDE

EPS = 1e-3
NFES = (10, 20, 50, 100)
SDES = {"VP": VPSDE, "VE": VESDE}


def mixtures():
    g = torch.Generator().manual_seed(0)
    return {"2d-ring8": GaussianMixture.ring(8, 4.0, 0.5),
            "64d-mix8": GaussianMixture(torch.randn(8, 64, generator=g, dtype=torch.float64) * 1.5, 0.5)}


def reference(score, sde, x_T, chunk=1000):
    """The exact map, solved `chunk` draws at a time (the step control sees fewer draws at once)."""
    flow = sde.reverse(score, probability_flow=True)
    out = []
    for x in x_T.split(chunk):
        x = odeint(flow, x, torch.tensor([sde.T, EPS], dtype=torch.float64), method="dopri8",
                   rtol=1e-11, atol=1e-11)[-1]
        out.append(tweedie_denoise(score, sde, x, torch.full((x.shape[0],), EPS, dtype=x.dtype)))
    return torch.cat(out)


def peer_dpmpp(score, sde, x_T, nfe: int, order: int):
    """diffusers' EDM DPM-Solver++ (Karras rho = 7, lower-order final steps) on our score."""
    from diffusers import EDMDPMSolverMultistepScheduler
    tt = torch.tensor([sde.T, EPS], dtype=torch.float64)
    smax, smin = (sde.sigma(tt) / sde.alpha(tt)).tolist()
    sch = EDMDPMSolverMultistepScheduler(sigma_min=smin, sigma_max=smax, solver_order=order,
                                         algorithm_type="dpmsolver++", final_sigmas_type="zero")
    sch.set_timesteps(nfe)
    sd = sch.config.sigma_data
    x = x_T / sde.alpha(tt[:1])
    for i, ts in enumerate(sch.timesteps):
        s_tilde = float(sch.sigmas[i])
        t = sde.t_of_log_snr(torch.tensor([-math.log(s_tilde)], dtype=torch.float64)).clamp(EPS / 2, sde.T)
        a = float(sde.alpha(t))
        d = tweedie_denoise(score, sde, a * x, t.expand(x.shape[0])).to(x.dtype)
        c_skip = sd ** 2 / (s_tilde ** 2 + sd ** 2)
        c_out = s_tilde * sd / (s_tilde ** 2 + sd ** 2) ** 0.5
        x = sch.step((d - c_skip * x) / c_out, ts, x).prev_sample
    return x


def karras_sigmas(smax: float, smin: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: n noise levels from smax down to smin."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


def peer_unipc(score, sde, x_T, nfe: int, order: int, times=None):
    """diffusers' UniPC (bh2, x0 prediction) on the Karras grid of sigma~ from sigma~(T) to sigma~(eps),
    or on the grid of sigma~(t) for the nfe given times T > ... > eps."""
    from diffusers import UniPCMultistepScheduler
    tt = torch.tensor([sde.T, EPS], dtype=torch.float64)
    smax, smin = (sde.sigma(tt) / sde.alpha(tt)).tolist()
    sch = UniPCMultistepScheduler(solver_order=order, prediction_type="sample", predict_x0=True,
                                  solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")
    sch.set_timesteps(nfe)  # nfe steps; the timesteps only index them, the sigmas are replaced:
    sig = karras_sigmas(smax, smin, nfe) if times is None else (sde.sigma(times) / sde.alpha(times)).double()
    sch.sigmas = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    sch.set_begin_index(0)
    x = x_T / (sde.alpha(tt[:1]) * math.sqrt(1 + smax ** 2))  # x_vp = x~ / sqrt(1 + sigma~^2)
    for i, ts in enumerate(sch.timesteps):
        s_tilde = float(sig[i])
        t = sde.t_of_log_snr(torch.tensor([-math.log(s_tilde)], dtype=torch.float64)).clamp(EPS / 2, sde.T)
        a = float(sde.alpha(t))
        d = tweedie_denoise(score, sde, a * math.sqrt(1 + s_tilde ** 2) * x, t.expand(x.shape[0])).to(x.dtype)
        x = sch.step(d, ts, x).prev_sample
    return x


PEERS = [("diffusers dpmpp_2m", peer_dpmpp, 2), ("diffusers dpmpp_3m", peer_dpmpp, 3),
         ("diffusers unipc_2", peer_unipc, 2), ("diffusers unipc_3", peer_unipc, 3)]

OURS_DET = [  # name, method, options, steps for an NFE budget n (or None if n cannot be met)
    ("ddim", "ddim", {}, lambda n: n - 1),
    ("dpmpp_2m", "dpmpp_2m", {}, lambda n: n - 1),
    ("dpmpp_3m", "dpmpp_3m", {}, lambda n: n - 1),
    ("dpmpp_3m karras", "dpmpp_3m", {"schedule": "karras"}, lambda n: n - 1),
    ("unipc", "unipc", {}, lambda n: n - 1),
    ("unipc uniform_t", "unipc", {"schedule": "uniform_t"}, lambda n: n - 1),
    ("unipc karras", "unipc", {"schedule": "karras"}, lambda n: n - 1),
    ("ode rk4 log_snr", "ode", {"solver": "rk4", "schedule": "log_snr"}, lambda n: (n - 1) // 4 or None),
]
OURS_STOCH = [
    ("euler_maruyama", "euler_maruyama", {}, lambda n: n - 1),
    ("reverse_diffusion", "reverse_diffusion", {}, lambda n: n - 1),
    ("ancestral", "ancestral", {}, lambda n: n - 1),
    ("pc (rd + ald)", "pc", {}, lambda n: (n - 1) // 2 or None),
    ("torchsde srk", "torchsde", {}, lambda n: (n - 1) // 3 or None),
]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def errors(x, ref):
    """RMS over samples and coordinates, and the median over samples of each sample's RMS."""
    per_sample = (x - ref).pow(2).flatten(1).mean(1)
    return per_sample.mean().sqrt().item(), per_sample.median().sqrt().item()


def unipc_name(order: int) -> str:
    """Row-name prefix of `unipc` at `order`: "unipc" for the default 3, else "unipc-4", ..."""
    return "unipc" if order == 3 else f"unipc-{order}"


def calibrated_name(order: int) -> str:
    return f"{unipc_name(order)} calibrated"


ORDER_OF = {calibrated_name(order): order for order in (1, 2, 3, 4)}  # a row name -> its unipc order


def run_accuracy(nfes, n_samples, rows, calibrate_nfes=(), n_calibration=3000, calibration_iterations=600,
                 calibration_pool=128000, calibrate_orders=(2, 3, 4), cases=None, sdes=("VP", "VE")):
    print(f"{'case':22s} {'method':24s} {'NFE':>5s} {'wall s':>7s} {'error':>10s}      {'median':>9s}")
    for mix_name, mix in mixtures().items():
        if cases is not None and mix_name not in cases:
            continue
        for sde in [SDES[name]() for name in sdes]:
            case = f"{mix_name} {type(sde).__name__[:2]}"
            score = mix.score_fn(sde)
            n = n_samples if mix.dim == 2 else n_samples // 2
            x_T = sde.prior_sampling((n, mix.dim), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            ref = reference(score, sde, x_T)
            true_a, _ = mix.sample(n, torch.Generator().manual_seed(2))
            true_b, _ = mix.sample(n, torch.Generator().manual_seed(3))
            sw_gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            floor = sliced_wasserstein(true_a, true_b, generator=sw_gen())
            print(f"{case:22s} {'(SW noise floor)':24s} {'':>5s} {'':>7s} {floor:10.4f}")
            x_cal = sde.prior_sampling((max(calibration_pool, n_calibration), mix.dim),
                                       generator=torch.Generator().manual_seed(11), dtype=torch.float64)
            cal_ref = None
            if calibrate_nfes:
                cal_ref, ref_wall = timed(lambda: fine_grid_reference(score, sde, x_cal, steps=200, eps=EPS))
                print(f"{case:22s} (calibration reference on {x_cal.shape[0]} draws in {ref_wall:.0f} s)")
            for budget in nfes + ("default",):
                entries = []
                for name, method, opts, steps_of in OURS_DET + OURS_STOCH:
                    steps = None if budget == "default" else steps_of(budget)
                    if budget != "default" and steps is None:
                        continue
                    if budget == "default" and method == "ode":
                        opts = {}  # the default ode is adaptive dopri5
                    (x, info), wall = timed(lambda: sample(score, sde, method=method, steps=steps, x_T=x_T,
                                                           generator=torch.Generator().manual_seed(4),
                                                           return_info=True, **opts))
                    det = (name, method, opts, steps_of) in OURS_DET
                    err, med = errors(x, ref) if det else (sliced_wasserstein(x, true_a, generator=sw_gen()), None)
                    entries.append((name + (" (default)" if budget == "default" else ""), info.nfe, wall, err, med))
                for order in calibrate_orders if budget in calibrate_nfes else ():
                    cal, fit_wall = timed(lambda: calibrate_schedule(score, sde, x_cal, method="unipc",
                                                                     steps=budget - 1, eps=EPS, order=order,
                                                                     iterations=calibration_iterations,
                                                                     batch=n_calibration, reference=cal_ref,
                                                                     generator=torch.Generator().manual_seed(0)))
                    print(f"{case:22s} ({calibrated_name(order)}: fitted in {fit_wall:.0f} s, {cal.iterations} "
                          f"iterations on {n_calibration} of {x_cal.shape[0]} draws; calibration RMS {cal.error:.3e}, "
                          f"from {cal.start} {cal.start_error:.3e}; "
                          f"grid t = {cal.times.tolist()})")  # in full: a rounded grid is another grid
                    (x, info), wall = timed(lambda: sample(score, sde, method="unipc", x_T=x_T, eps=EPS, order=order,
                                                           schedule=cal.times, return_info=True))
                    entries.append((calibrated_name(order), info.nfe, wall, *errors(x, ref)))
                    if order == 3:
                        x, wall = timed(lambda: peer_unipc(score, sde, x_T, budget, 3, times=cal.times))
                        entries.append(("ablation: diffusers unipc_3 on our grid", budget, wall, *errors(x, ref)))
                if budget != "default":
                    for name, peer, order in PEERS:
                        x, wall = timed(lambda: peer(score, sde, x_T, budget, order))
                        entries.append((name, budget, wall, *errors(x, ref)))
                for name, nfe, wall, err, med in entries:
                    kind = "sw" if med is None else "rms"
                    print(f"{case:22s} {name:24s} {nfe:5d} {wall:7.3f} {err:10.3e} {kind}" +
                          ("" if med is None else f"  {med:9.3e}"))
                    rows.append((case, name, nfe, wall, err, kind, med))


ROW = re.compile(r"^(\S+ V[PE]) +(\S.*?) +(\d+) +([\d.]+) +(\S+) (rms|sw)(?: +(\S+))?$")


def rows_from_logs(paths):
    """The result rows printed by earlier runs (e.g. one per --mixtures / --sdes part), in order."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            m = ROW.match(line)
            if m and not m.group(2).startswith("("):
                case, name, nfe, wall, err, kind, med = m.groups()
                rows.append((case, name, int(nfe), float(wall), float(err), kind, float(med) if med else None))
    return rows


def summary(rows, nfes):
    """Per case and NFE: our default (unipc), unipc calibrated, our best, the best peer, and the
    ratios best peer / ours (RMS; the last column medians, peer / calibrated or else / default)."""
    print(f"\n{'case':14s} {'NFE':>4s} {'unipc':>10s} {'calibrated':>10s} {'our best':>28s} {'best peer':>30s} "
          f"{'peer/unipc':>10s} {'peer/calib':>10s} {'peer/best':>9s} {'median ratio':>12s} {'ablation':>9s}")
    for case in dict.fromkeys(r[0] for r in rows):
        for n in nfes:
            det = [r for r in rows if r[0] == case and r[2] == n and r[5] == "rms"]
            peers = [r for r in det if r[1].startswith("diffusers")]
            ours = [r for r in det if not r[1].startswith(("diffusers", "ablation"))]
            if not peers or not ours:
                continue
            default = next(r for r in ours if r[1] == "unipc")
            calib = min((r for r in ours if r[1].endswith("calibrated")), key=lambda r: r[4], default=None)
            ablation = next((r for r in det if r[1].startswith("ablation")), None)
            best, peer = min(ours, key=lambda r: r[4]), min(peers, key=lambda r: r[4])
            peer_med = min(r[6] for r in peers)
            nan = float("nan")
            print(f"{case:14s} {n:4d} {default[4]:10.3e} {calib[4] if calib else nan:10.3e} {best[1]:>18s} "
                  f"{best[4]:9.3e} {peer[1]:>20s} {peer[4]:9.3e} {peer[4] / default[4]:10.2f} "
                  f"{peer[4] / calib[4] if calib else nan:10.2f} {peer[4] / best[4]:9.2f} "
                  f"{peer_med / (calib or default)[6]:12.2f} {ablation[4] if ablation else nan:9.3e}")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = sorted({r[0] for r in rows})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for name in ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc-2 calibrated", "unipc calibrated",
                     "unipc-4 calibrated",
                     "ode rk4 log_snr", "diffusers dpmpp_2m", "diffusers dpmpp_3m", "diffusers unipc_3"]:
            pts = sorted((r[2], r[4]) for r in rows if r[0] == case and r[1] == name)
            if pts:
                ax.loglog(*zip(*pts), "o--" if name.startswith("diffusers") else "o-", label=name, ms=3)
        ax.set_title(case)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("RMS error vs exact PF-ODE map")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="NFE 10 and 20 only, fewer samples")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--plot", default=None, help="write the error-vs-NFE plot here")
    p.add_argument("--calibrate-nfes", type=int, nargs="*", default=[10, 20],
                   help="NFE budgets at which to fit a unipc grid (default 10 20; none: skip)")
    p.add_argument("--calibration-samples", type=int, default=3000, help="fitting minibatch size")
    p.add_argument("--calibration-pool", type=int, default=128000, help="prior draws the minibatches are drawn from")
    p.add_argument("--calibrate-orders", type=int, nargs="+", default=[2, 3, 4], help="unipc orders to fit grids for")
    p.add_argument("--mixtures", nargs="+", default=None, help="which mixtures (default: all of them)")
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES), help="which SDEs (default: both)")
    p.add_argument("--calibration-iterations", type=int, default=600, help="gradient steps of each fit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--from-logs", nargs="+", default=None, metavar="LOG",
                   help="run nothing: the summary (and --plot) of the rows in these saved outputs")
    args = p.parse_args()
    nfes = (10, 20) if args.quick else NFES
    if args.from_logs:
        rows = rows_from_logs(args.from_logs)
        summary(rows, nfes)
        if args.plot:
            plot(rows, args.plot)
        return
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    rows = []
    run_accuracy(nfes, 500 if args.quick else args.samples, rows, tuple(args.calibrate_nfes),
                 args.calibration_samples, args.calibration_iterations, args.calibration_pool,
                 tuple(args.calibrate_orders), args.mixtures, tuple(args.sdes))
    summary(rows, nfes)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
