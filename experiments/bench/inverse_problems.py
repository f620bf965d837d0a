"""Inverse-problem solvers against the exact Gaussian-mixture posterior (GaussianMixture.posterior).

For each case and method, at each NFE (score evaluations the sampler counts, the final denoising
step included; DPS and PosteriorCovarianceGuidance also take one vector-Jacobian product of the
score per evaluation): SW2 and MMD of N samples to N exact posterior samples, beside the noise
floor; the reference is a set of 20000 exact samples (its first N for MMD, whose cost is quadratic).
The noise floor is the root mean square of the same statistic over 5 sets of N exact posterior
samples: one set's value is itself noisy (SW2 0.06-0.34 across sets in case (b)), and the unbiased
MMD of exact sets is centred on 0, so its typical size is its RMS.
twisted_smc takes one score evaluation and the twist's VJPs per step too, on N particles, and runs
once per seed of --seeds (one SMC run couples its particles, so its error varies from seed to seed);
in the "moves" row, --moves of its NFE are resample-move Langevin steps after the final resampling.
VP SDE, exact mixture score, float64.

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/bench/inverse_problems.py [--n 2000] [--nfe 20 50 100 1000]
        [--seeds 0 1 2] [--cases a b c] [--methods tds pigdm] [--moves 5] [--move-step 0.1]
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde.analytic import GaussianMixture
from scoresde.metrics.points import mmd, sliced_wasserstein
from scoresde.sampling import DPS, Inpainting, MatrixOperator, Measurement, PosteriorCovarianceGuidance, sample
from scoresde.sampling.smc import twisted_smc
from scoresde.sdes import VPSDE


def cases():
    """(name, prior, A, y, noise_std): the three problems of the table."""
    ring = GaussianMixture.ring()
    g = torch.Generator().manual_seed(18)
    means = 3 * torch.randn(6, 16, dtype=torch.float64, generator=g)
    stds = 0.5 + 0.5 * torch.rand(6, dtype=torch.float64, generator=g)
    mix16 = GaussianMixture(means, stds)
    A16 = torch.randn(4, 16, dtype=torch.float64, generator=g) / 4
    x_true, _ = mix16.sample(1, g)
    y16 = (x_true @ A16.T)[0] + 0.05 * torch.randn(4, dtype=torch.float64, generator=g)
    return [
        ("ring inpainting x0=-1.41", ring, torch.tensor([[1.0, 0.0]], dtype=torch.float64),
         torch.tensor([-1.41], dtype=torch.float64), 0.0),
        ("ring projection 0.6x0+0.8x1=1, s=0.3", ring, torch.tensor([[0.6, 0.8]], dtype=torch.float64),
         torch.tensor([1.0], dtype=torch.float64), 0.3),
        ("16-D mixture, 4x16 A, s=0.05", mix16, A16, y16, 0.05),
    ]


def data_std(prior):
    """sqrt of the prior's mean per-coordinate variance (PosteriorCovarianceGuidance's data scale)."""
    m = (prior.weights[:, None] * prior.means).sum(0)
    var = (prior.weights[:, None] * ((prior.means - m) ** 2 + prior.stds[:, None] ** 2)).sum(0)
    return float(var.mean().sqrt())


def methods(prior, A, y, noise, sde, n, moves=5, move_step=0.1):
    """name -> (method, guidance, options, evaluations per step) for the methods that apply."""
    score = prior.score_fn(sde)
    meas = Measurement(MatrixOperator(A), y, noise)
    out = {}
    is_mask = bool(((A == 0) | (A == 1)).all()) and bool((A.sum(1) == 1).all()) and noise == 0
    if is_mask:
        mask = A.sum(0)
        known = torch.zeros(n, prior.dim, dtype=torch.float64)
        known[:, mask.bool()] = y
        inpaint = Inpainting(known, mask, sde)
        out["replacement"] = ("ancestral", inpaint, {}, 1)
        out["repaint (resample 5)"] = ("repaint", inpaint, {"resample": 5}, 5)
        out["dps (normalized, zeta 1)"] = ("ancestral", DPS(score, sde, meas, 1.0, "normalized"), {}, 1)
    else:
        out["dps (gaussian)"] = ("ancestral", DPS(score, sde, meas), {}, 1)
    out["pigdm (isotropic cov)"] = ("ancestral", PosteriorCovarianceGuidance(score, sde, meas, data_std(prior)), {}, 1)
    out["pigdm (jacobian cov)"] = ("ancestral", PosteriorCovarianceGuidance(
        score, sde, meas, covariance="jacobian"), {}, 1)
    jacobian = PosteriorCovarianceGuidance(score, sde, meas, covariance="jacobian")
    out["tds (shift, ancestral, uniform)"] = ("twisted_smc", jacobian, {
        "proposal": "shift", "kernel": "ancestral", "schedule": "uniform_t"}, 1)
    out["tds (gaussian, 2m, log-snr)"] = ("twisted_smc", jacobian, {}, 1)
    out[f"tds (gaussian, 2m, {moves} moves)"] = ("twisted_smc", jacobian, {"moves": moves, "move_step": move_step}, 1)
    return out


def run(method, guidance, options, per_step, prior, sde, n, nfe, seed=0):
    """(samples, NFE done) of one method at about `nfe` score evaluations."""
    if method == "twisted_smc":
        x, info = twisted_smc(guidance, sde, (n, prior.dim), steps=nfe - 1 - options.get("moves", 0),
                              generator=torch.Generator().manual_seed(seed), **options)
        return x, info["nfe"]
    x, info = sample(prior.score_fn(sde), sde, method=method, steps=max(1, (nfe - 1) // per_step),
                     guidance=guidance, generator=torch.Generator().manual_seed(0),
                     x_T=torch.randn(n, prior.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                     return_info=True, **options)
    return x, info.nfe


def figure(path, sde, n):
    """Exact posterior samples beside each method's at NFE 100, for the two ring cases."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [["replacement", "repaint (resample 5)", "pigdm (jacobian cov)"],
             ["pigdm (jacobian cov)", "tds (shift, ancestral, uniform)", "tds (gaussian, 2m, log-snr)"]]
    fig, axes = plt.subplots(2, 4, figsize=(10, 5), sharex=True, sharey=True)
    for row, (case, prior, A, y, noise), names in zip(axes, cases()[:2], shown):
        exact, _ = prior.posterior(A, y, noise).sample(n, torch.Generator().manual_seed(1))
        all_methods = methods(prior, A, y, noise, sde, n)
        panels = [("exact posterior", exact)] + [(name, run(*all_methods[name], prior, sde, n, 100)[0])
                                                  for name in names]
        for ax, (name, x) in zip(row, panels):
            ax.scatter(prior.means[:, 0], prior.means[:, 1], s=30, c="lightgray")
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
            ax.set_title(name, fontsize=8)
            ax.set_xlim(-6, 6)
            ax.set_ylim(-6, 6)
            ax.set_aspect("equal")
        row[0].set_ylabel(case, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--figure", help="instead of the table, draw cases (a) and (b) at NFE 100 to this PNG")
    parser.add_argument("--n-ref", type=int, default=20000, help="size of the exact reference set")
    parser.add_argument("--nfe", type=int, nargs="+", default=[20, 50, 100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="twisted_smc's seeds")
    parser.add_argument("--moves", type=int, default=5, help="twisted_smc's moves in the resample-move row")
    parser.add_argument("--move-step", type=float, default=0.1, help="and their move_step")
    parser.add_argument("--cases", nargs="+", choices="abc", default=list("abc"), help="only these cases")
    parser.add_argument("--methods", nargs="+", help="only the methods whose name contains one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sde = VPSDE()
    if args.figure:
        return figure(args.figure, sde, args.n)
    print(f"VP SDE, exact mixture score, ancestral steps unless named, n = {args.n} samples a set, float64")
    n = args.n
    for letter, (case, prior, A, y, noise) in zip("abc", cases()):
        if letter not in args.cases:
            continue
        post = prior.posterior(A, y, noise)
        truth, _ = post.sample(args.n_ref, torch.Generator().manual_seed(1))
        floors = torch.tensor([[sliced_wasserstein(f, truth, generator=torch.Generator().manual_seed(3)),
                                mmd(f, truth[:n])]
                               for f in (post.sample(n, torch.Generator().manual_seed(k))[0] for k in range(2, 7))])
        sw_floor, mmd_floor = floors.pow(2).mean(0).sqrt().tolist()
        print(f"\n## ({letter}) {case}: posterior weights {[round(w, 3) for w in post.weights.tolist()]}")
        print(f"noise floor (RMS over 5 exact sets): SW2 {sw_floor:.4f}  MMD {mmd_floor:.2e}; the sets: SW2 "
              f"{' '.join(f'{v:.3f}' for v in floors[:, 0].tolist())}, "
              f"MMD {' '.join(f'{v:.1e}' for v in floors[:, 1].tolist())}")
        print(f"{'method':32s} {'seed':>4s} {'NFE':>5s} {'SW2':>8s} {'MMD':>9s} {'SW2/fl':>7s} {'MMD/fl':>7s} "
              f"{'seconds':>8s}")
        rows = methods(prior, A, y, noise, sde, n, args.moves, args.move_step)
        for name, (method, guidance, options, per_step) in rows.items():
            if args.methods and not any(part in name for part in args.methods):
                continue
            for nfe in args.nfe:
                for seed in args.seeds if method == "twisted_smc" else [0]:
                    t0 = time.perf_counter()
                    try:
                        x, nfe_done = run(method, guidance, options, per_step, prior, sde, n, nfe, seed)
                    except ValueError as err:
                        print(f"{name:32s} {seed:4d} {nfe:5d} diverged: {str(err)[:80]}")
                        continue
                    sec = time.perf_counter() - t0
                    sw = sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(3))
                    m = mmd(x, truth[:n])
                    print(f"{name:32s} {seed:4d} {nfe_done:5d} {sw:8.4f} {m:9.2e} {sw / sw_floor:7.2f} "
                          f"{m / mmd_floor:7.2f} {sec:8.1f}", flush=True)


if __name__ == "__main__":
    main()
