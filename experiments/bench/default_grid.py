"""Default-grid benchmark: `unipc` on its pilot grid against k-diffusion's samplers on their Karras
grid, on Gaussian mixtures with exact scores, development and held-out.

    python experiments/bench/default_grid.py --k-diffusion /tmp/kd/k_diffusion [--cases held-out] [--oracle]

Error: RMS (over samples and coordinates) of the final denoised sample against the exact map
x_T -> x0_hat (dopri8 at rtol = atol = 1e-11 to eps = 1e-3, then the Tweedie step), from the same
x_T, as in samplers.py. NFE counts every score evaluation of a sample, the final Tweedie step
included; the pilot grid's own evaluations (`pilot_schedule`, once per case and NFE) are counted
and printed beside it: score calls, draw-evaluations, and those per measured sample.

Draws: 20000 in 2-D and 5000 in 64-D by default. The RMS is set by the few draws that end near
another mode than the exact map's: with 500 64-D draws, one such draw moved unipc's ratio to
k-diffusion's best from about 0.5 to 5.9 (64d-rand16 VE, NFE 20).

--oracle adds the grid fitted to the measured draws themselves (`calibrate_schedule` with their
exact reference, 200 iterations): not a sampler anyone can run, but the error no grid for `unipc`
is likely to beat, so it tells whether a goal is within reach of grids at all.

Mixtures: "dev" are samplers.py's two (2d-ring8, 64d-mix8), on which the pilot rule and its
constants were chosen; "held-out" are random mixtures made with other seeds and structure (2-D:
7 and 12 modes, widths 0.2-0.8, unequal weights; 64-D: 10 and 16 modes, mean scales 1 and 3,
widths 0.3-1.0),
never looked at while choosing.

Peer: k-diffusion's own `sampling.py` (lms, dpmpp_2m, heun, euler on get_sigmas_karras, rho 7,
sigma~ from sigma~(T) to sigma~(eps), then to 0), loaded by file path from a k-diffusion wheel
unpacked outside the repository (`pip download k-diffusion --no-deps`; its package __init__
imports optional training modules, so only sampling.py is loaded, its one `utils.append_dims`
import served by a stand-in). Any kernel SDE's flow is EDM's ODE in x~ = x/alpha, sigma~ = sigma/alpha,
with denoiser D(x~, sigma~) = x0_hat(alpha x~, t(sigma~)). Without --k-diffusion the k-diffusion
rows are skipped (said so in the output). --check-peer runs k-diffusion's heun at 500 steps,
which must match the exact map closely, before anything else.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import sys
import types
from pathlib import Path

import torch

from scoresde.analytic import GaussianMixture
from scoresde.sampling import calibrate_schedule, sample, tweedie_denoise
from scoresde.sampling.pilot import pilot_schedule
from scoresde.sdes import VESDE, VPSDE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import EPS, errors, mixtures, reference, timed  # noqa: E402

SDES = {"VP": VPSDE, "VE": VESDE}
KD_SAMPLERS = {"lms": 1, "dpmpp_2m": 1, "heun": 2, "euler": 1}  # evaluations per Karras step


def held_out_mixtures():
    """Random mixtures from seeds and structure not used while choosing the pilot rule."""
    out = {}
    for name, seed, dim, modes, scale, widths in [("2d-rand7", 101, 2, 7, 3.0, (0.2, 0.8)),
                                                  ("2d-rand12", 102, 2, 12, 4.0, (0.2, 0.8)),
                                                  ("64d-rand10", 201, 64, 10, 1.0, (0.3, 1.0)),
                                                  ("64d-rand16", 202, 64, 16, 3.0, (0.3, 1.0))]:
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(modes, dim, generator=g, dtype=torch.float64) * scale
        stds = widths[0] + (widths[1] - widths[0]) * torch.rand(modes, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(modes, generator=g, dtype=torch.float64)
        out[name] = GaussianMixture(means, stds, weights)
    return out


def load_k_diffusion(package_dir: str):
    """k-diffusion's sampling module, loaded by file path with a stand-in for its `utils` import."""
    path = Path(package_dir) / "sampling.py"
    if not path.is_file():
        raise FileNotFoundError(f"no k-diffusion sampling.py at {path}")
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(path.parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.dim())]
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sigma_range(sde):
    tt = torch.tensor([sde.T, EPS], dtype=torch.float64)
    return (sde.sigma(tt) / sde.alpha(tt)).tolist()


def k_diffusion_run(kd, name: str, score, sde, x_T, karras_steps: int):
    """k-diffusion's sample_<name> on its Karras grid of karras_steps noise levels (then 0)."""
    smax, smin = sigma_range(sde)
    sigmas = kd.get_sigmas_karras(karras_steps, smin, smax, rho=7.0).to(torch.float64)

    def denoiser(x_tilde, sigma_tilde):
        s = float(sigma_tilde.reshape(-1)[0])
        t = sde.t_of_log_snr(torch.tensor([-math.log(s)], dtype=torch.float64)).clamp(EPS / 2, sde.T)
        return tweedie_denoise(score, sde, float(sde.alpha(t)) * x_tilde, t.expand(x_tilde.shape[0]))

    x_tilde = x_T / sde.alpha(torch.tensor([sde.T], dtype=torch.float64))
    return getattr(kd, f"sample_{name}")(denoiser, x_tilde, sigmas, disable=True)


def k_diffusion_steps(name: str, nfe: int) -> int:
    """Karras steps within an NFE budget: heun spends 2 evaluations a step but 1 on the last (to 0)."""
    return (nfe + 1) // 2 if KD_SAMPLERS[name] == 2 else nfe


class CountedScore:
    """The score, counting its calls and the draws evaluated in them (the pilot's cost)."""

    def __init__(self, score):
        self.score, self.calls, self.draws = score, 0, 0

    def __call__(self, x, t):
        self.calls += 1
        self.draws += x.shape[0]
        return self.score(x, t)


def run_case(case, mix, sde, n, nfes, kd, rows, oracle, pilot_options):
    score = mix.score_fn(sde)
    x_T = sde.prior_sampling((n, mix.dim), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref, ref_wall = timed(lambda: reference(score, sde, x_T))
    print(f"{case:18s} (reference on {n} draws in {ref_wall:.0f} s)", flush=True)
    for nfe in nfes:
        entries = []
        for label, schedule in [("unipc log_snr", "log_snr"), ("unipc karras", "karras")]:
            x, wall = timed(lambda: sample(score, sde, method="unipc", steps=nfe - 1, x_T=x_T, schedule=schedule))
            entries.append((label, nfe, wall, *errors(x, ref)))
        counted = CountedScore(score)
        grid, pilot_wall = timed(lambda: pilot_schedule(counted, sde, nfe - 1, EPS, (mix.dim,), **pilot_options))
        x, wall = timed(lambda: sample(score, sde, method="unipc", steps=nfe - 1, x_T=x_T, schedule=grid))
        entries.append(("unipc pilot", nfe, wall + pilot_wall, *errors(x, ref)))
        if oracle:
            fit, wall = timed(lambda: calibrate_schedule(score, sde, x_T, steps=nfe - 1, eps=EPS, iterations=200,
                                                         batch=min(n, 1000), reference=ref,
                                                         generator=torch.Generator().manual_seed(0)))
            x = sample(score, sde, method="unipc", steps=nfe - 1, x_T=x_T, schedule=fit.times.detach())
            entries.append(("unipc oracle", nfe, wall, *errors(x, ref)))
        print(f"{case:18s} (pilot grid: {counted.calls} score calls, {counted.draws} draw-evaluations = "
              f"{counted.draws / n:.0f} per measured sample, {pilot_wall:.1f} s; lambda = "
              f"{[round(v, 3) for v in sde.log_snr(grid).tolist()]})")
        for name in KD_SAMPLERS if kd is not None else ():
            steps = k_diffusion_steps(name, nfe)
            x, wall = timed(lambda: k_diffusion_run(kd, name, score, sde, x_T, steps))
            used = steps * KD_SAMPLERS[name] - (KD_SAMPLERS[name] - 1)
            entries.append((f"k-diffusion {name}", used, wall, *errors(x, ref)))
        for name, used, wall, err, med in entries:
            print(f"{case:18s} {name:22s} {used:5d} {nfe:5d} {wall:7.2f} {err:10.3e} {med:10.3e}", flush=True)
            rows.append((case, name, nfe, err))


def summary(rows, nfes):
    """Per case and NFE budget: unipc on log_snr, the pilot grid (and the oracle's), k-diffusion's best, ratios."""
    print(f"\n{'case':18s} {'NFE':>4s} {'log_snr':>9s} {'pilot':>9s} {'k-diffusion best':>26s} "
          f"{'pilot/kd':>8s} {'log_snr/kd':>10s} {'oracle/kd':>9s}")
    ratios = {}
    for case in dict.fromkeys(r[0] for r in rows):
        for nfe in nfes:
            got = {r[1]: r[3] for r in rows if r[0] == case and r[2] == nfe}
            kd = {k: v for k, v in got.items() if k.startswith("k-diffusion")}
            if not kd:
                print(f"{case:18s} {nfe:4d} {got['unipc log_snr']:9.2e} {got['unipc pilot']:9.2e}")
                continue
            best = min(kd, key=kd.get)
            ratio = got["unipc pilot"] / kd[best]
            ratios.setdefault(nfe, []).append(ratio)
            oracle = f"{got['unipc oracle'] / kd[best]:9.2f}" if "unipc oracle" in got else ""
            print(f"{case:18s} {nfe:4d} {got['unipc log_snr']:9.2e} {got['unipc pilot']:9.2e} "
                  f"{best[12:]:>16s} {kd[best]:9.2e} {ratio:8.2f} {got['unipc log_snr'] / kd[best]:10.2f} {oracle}")
    for nfe, r in ratios.items():
        print(f"NFE {nfe}: pilot / k-diffusion best: max {max(r):.2f}, median {sorted(r)[len(r) // 2]:.2f}")


def check_peer(kd):
    """k-diffusion's heun at 500 steps against the exact map: the wrapper's sanity check."""
    mix = mixtures()["2d-ring8"]
    for sde in (VPSDE(), VESDE()):
        score = mix.score_fn(sde)
        x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        err, _ = errors(k_diffusion_run(kd, "heun", score, sde, x_T, 500), reference(score, sde, x_T))
        print(f"peer check: k-diffusion heun, 500 Karras steps, 2d-ring8 {type(sde).__name__}: RMS {err:.2e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k-diffusion", default=None, metavar="DIR", help="an unpacked k_diffusion package directory")
    p.add_argument("--cases", nargs="+", default=["dev", "held-out"], choices=["dev", "held-out"])
    p.add_argument("--mixtures", nargs="+", default=None, help="only these mixtures")
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES))
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--samples-2d", type=int, default=20000)
    p.add_argument("--samples-64d", type=int, default=5000)
    p.add_argument("--check-peer", action="store_true")
    p.add_argument("--oracle", action="store_true", help="also fit a grid to the measured draws (module docstring)")
    p.add_argument("--pilot-pool", type=int, default=None, help="pilot_schedule's pool (default: its own)")
    p.add_argument("--pilot-iterations", type=int, default=None, help="pilot_schedule's iterations (default: its own)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads 1")
    kd = None
    if args.k_diffusion is None:
        print("k-diffusion rows skipped: pass --k-diffusion DIR (an unpacked k-diffusion wheel's k_diffusion/)")
    else:
        kd = load_k_diffusion(args.k_diffusion)
        if args.check_peer:
            check_peer(kd)
    chosen = {}
    if "dev" in args.cases:
        chosen.update(mixtures())
    if "held-out" in args.cases:
        chosen.update(held_out_mixtures())
    pilot_options = {k: v for k, v in [("pool", args.pilot_pool), ("iterations", args.pilot_iterations)] if v is not None}
    rows = []
    for name, mix in chosen.items():
        if args.mixtures and name not in args.mixtures:
            continue
        for sde_name in args.sdes:
            n = args.samples_2d if mix.dim == 2 else args.samples_64d
            run_case(f"{name} {sde_name}", mix, SDES[sde_name](), n, args.nfes, kd, rows, args.oracle, pilot_options)
    summary(rows, args.nfes)


if __name__ == "__main__":
    main()
