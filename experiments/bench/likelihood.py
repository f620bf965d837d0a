"""Likelihood benchmark: scoresde.log_likelihood against the approach of Song et al.'s code.

Song et al. (score_sde, likelihood.py) integrate the flattened batch [x, delta log p] as one numpy
system with scipy's solve_ivp RK45 (rtol = atol = 1e-5) and a Hutchinson divergence with one Gaussian
probe per sample drawn before the solve. Here both run on the same exact score of a Gaussian mixture
(VP SDE, float32 score evaluations as for a network), 1000 points in 2-D and 64-D:

  song-hutch   score_sde's approach as written (RK45, batch RMS error norm, Hutchinson)
  song-exact   the same integrator with our exact divergence (isolates the solver)
  ours-exact   scoresde.log_likelihood(trace="exact"), dopri5 with the per-sample error norm
  ours-hutch   scoresde.log_likelihood(trace="hutchinson"), one fixed Rademacher probe

Errors are per-sample |log p - reference| in nats; the reference is scipy's DOP853 at
rtol = atol = 1e-10 in float64 with the mixture's divergence in closed form
(div score = sum_k r_k (||a_k||^2 - D/v_k) - ||score||^2, a_k = (alpha mu_k - x)/v_k).

    .venv/bin/python experiments/bench/likelihood.py [--n 1000] [--dims 2 64] [--tols 1e-5]

Wall time is the best of --repeats runs with --threads torch threads (default 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from scoresde.analytic import GaussianMixture
from scoresde.likelihood import _ProbabilityFlow, log_likelihood
from scoresde.sdes import VPSDE

EPS = 1e-5


def make_mixture(dim: int) -> GaussianMixture:
    if dim == 2:
        return GaussianMixture.ring(n_modes=8, radius=4.0, std=0.5)
    means = 1.5 * torch.randn(8, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    return GaussianMixture(means, 0.5)


def closed_form_divergence(gm, sde, x, t):
    alpha, var = gm._moments(sde, t)
    r = torch.softmax(gm.component_log_prob(x, t, sde), dim=1)
    a = (alpha[:, None, None] * gm.means[None] - x[:, None, :]) / var[:, :, None]
    score = (r[:, :, None] * a).sum(1)
    div_score = (r * (a.pow(2).sum(-1) - gm.dim / var)).sum(1) - score.pow(2).sum(1)
    return gm.dim * sde.f(t) - 0.5 * sde.g2(t) * div_score


def scipy_flat(x: torch.Tensor, sde, rhs_torch, method: str, tol: float):
    """score_sde's scheme: the whole batch as one flattened numpy ODE system; returns (log p, nfe)."""
    B, D = x.shape
    nfe = 0

    def rhs(t, y):
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:B * D].reshape(B, D))
        drift, div = rhs_torch(xt, torch.full((B,), t, dtype=torch.float64))
        return np.concatenate([drift.double().flatten().numpy(), div.double().numpy()])

    y0 = np.concatenate([x.double().flatten().numpy(), np.zeros(B)])
    sol = solve_ivp(rhs, (EPS, sde.T), y0, method=method, rtol=tol, atol=tol)
    z = torch.from_numpy(sol.y[:B * D, -1].reshape(B, D))
    return sde.prior_logp(z) + torch.from_numpy(sol.y[B * D:, -1]), nfe


def run(dim: int, n: int, tols: list[float], repeats: int) -> list[dict]:
    sde, gm = VPSDE(), make_mixture(dim)
    x, _ = gm.sample(n, torch.Generator().manual_seed(0))
    score32 = gm.score_fn(sde)

    def reference_rhs(xt, t):
        drift = sde.f(t)[:, None] * xt - 0.5 * sde.g2(t)[:, None] * gm.score(xt, t, sde)
        return drift, closed_form_divergence(gm, sde, xt, t)

    t0 = time.perf_counter()
    ref, ref_nfe = scipy_flat(x, sde, reference_rhs, "DOP853", 1e-10)
    print(f"  reference D={dim}: DOP853 rtol=atol=1e-10, {ref_nfe} NFE, {time.perf_counter() - t0:.1f} s",
          flush=True)

    flow = _ProbabilityFlow(score32, sde)
    probe = torch.randn(1, n, dim, generator=torch.Generator().manual_seed(1))

    def song_rhs(probes):
        def rhs(xt, t):
            return flow.drift_and_divergence(xt.float(), t.float(), probes)
        return rhs

    rows = []
    for tol in tols:
        contenders = {
            "song-hutch": lambda: scipy_flat(x, sde, song_rhs(probe), "RK45", tol),
            "song-exact": lambda: scipy_flat(x, sde, song_rhs(None), "RK45", tol),
            "ours-exact": lambda: _ours(score32, sde, x, tol, "exact"),
            "ours-hutch": lambda: _ours(score32, sde, x, tol, "hutchinson"),
        }
        for name, fn in contenders.items():
            wall = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                logp, nfe = fn()
                wall = min(wall, time.perf_counter() - t0)
            err = (logp.double() - ref).abs()
            rows.append({"D": dim, "method": name, "tol": tol, "mean_err": err.mean().item(),
                         "max_err": err.max().item(), "nfe": nfe, "wall_s": wall})
            print(f"  {name:10s} tol={tol:.0e}  mean|err| {rows[-1]['mean_err']:.2e}  "
                  f"max|err| {rows[-1]['max_err']:.2e}  NFE {nfe:4d}  {wall:6.2f} s", flush=True)
    return rows


def _ours(score_fn, sde, x, tol, trace):
    res = log_likelihood(score_fn, sde, x.float(), rtol=tol, atol=tol, trace=trace,
                         generator=torch.Generator().manual_seed(1))
    return res.log_p, res.nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-5])
    parser.add_argument("--repeats", type=int, default=2, help="wall time: best of this many runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads ran 10x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dim in args.dims:
        rows += run(dim, args.n, args.tols, args.repeats)
    print("\n| D | method | tol | mean abs err (nats) | max abs err (nats) | NFE | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['D']} | {r['method']} | {r['tol']:.0e} | {r['mean_err']:.2e} | {r['max_err']:.2e} | "
              f"{r['nfe']} | {r['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
