"""Likelihood benchmark: scoresde.log_likelihood against the approach of Song et al.'s code.

Song et al. (score_sde, likelihood.py) integrate the flattened batch [x, delta log p] as one numpy
system with scipy's solve_ivp RK45 (rtol = atol = 1e-5) and a Hutchinson divergence with one Gaussian
probe per sample drawn before the solve. Here both run on the same exact score of a Gaussian mixture
(VP SDE, float32 score evaluations as for a network), 1000 points in 2-D and 64-D:

  song-hutch   score_sde's approach as written (RK45, batch RMS error norm, Hutchinson)
  song-exact   the same integrator with our exact divergence (isolates the solver)
  ours-exact   scoresde.log_likelihood(trace="exact"), per-sample error norm
  ours-hutch   scoresde.log_likelihood(trace="hutchinson"), one fixed Rademacher probe

Song's two run at --song-tols; ours with dopri5 (the same 5(4) pair as RK45) at each of --tols, and
with the lower-order bosh3 (3(2)) and fehlberg2 (2(1)) at each of --low-order-tols (the sweep); and
with the fixed-grid midpoint (order 2) and rk4 (order 4) methods at each of --fixed-steps steps
uniform in t (the cost known in advance: steps x stages NFE, no error control). Errors are per-sample
|log p - reference| in nats; the reference is scipy's DOP853 at rtol = atol = 1e-10 in float64 with
the mixture's divergence in closed form (div score = sum_k r_k (||a_k||^2 - D/v_k) - ||score||^2,
a_k = (alpha mu_k - x)/v_k). Wall time is the median of --repeats runs, the contenders interleaved
(run r of every contender before run r + 1 of any), with --threads torch threads (default 1).

The matched-accuracy tables pair each song-* run with the fastest ours-* run whose mean and max
error are both at most the song-* run's ("equal or better accuracy"), and then at most a tenth of
them, and give the ratio of medians.
It also times one exact divergence with all D cotangents in one vmap (the previous scheme) and with
the current chunking (scoresde.likelihood._EXACT_TRACE_ELEMENTS).

    .venv/bin/python experiments/bench/likelihood.py [--n 1000] [--dims 2 64] [--tols 1e-1 1e-2 1e-3 1e-4 1e-5]
                                                     [--fixed-steps 2 3 4 6 8 16]
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


def run(dim: int, n: int, tols: list[float], low_order_tols: list[float], song_tols: list[float],
        fixed_steps: list[int], repeats: int):
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

    contenders = [(name, f"tol {tol:.0e}", fn) for tol in song_tols for name, fn in (
        ("song-hutch", lambda tol=tol: scipy_flat(x, sde, song_rhs(probe), "RK45", tol)),
        ("song-exact", lambda tol=tol: scipy_flat(x, sde, song_rhs(None), "RK45", tol)))]
    sweep = [("dopri5", {"rtol": tol, "atol": tol}) for tol in tols]
    sweep += [(m, {"rtol": tol, "atol": tol}) for m in ("bosh3", "fehlberg2") for tol in low_order_tols]
    sweep += [(m, {"steps": steps}) for m in ("midpoint", "rk4") for steps in fixed_steps]
    contenders += [(f"{name} {method}", _setting(opts), fn) for method, opts in sweep for name, fn in (
        ("ours-exact", lambda opts=opts, method=method: _ours(score32, sde, x, "exact", method, opts)),
        ("ours-hutch", lambda opts=opts, method=method: _ours(score32, sde, x, "hutchinson", method, opts)))]
    walls = {(name, setting): [] for name, setting, _ in contenders}
    rows = {}
    for r in range(repeats):
        for name, setting, fn in contenders:
            t0 = time.perf_counter()
            logp, nfe = fn()
            walls[name, setting].append(time.perf_counter() - t0)
            if r == 0:
                err = (logp.double() - ref).abs()
                rows[name, setting] = {"D": dim, "method": name, "setting": setting, "mean_err": err.mean().item(),
                                       "max_err": err.max().item(), "nfe": nfe}
            row = rows[name, setting]
            print(f"  [{r + 1}/{repeats}] {name:20s} {setting:9s}  mean|err| {row['mean_err']:.2e}  "
                  f"max|err| {row['max_err']:.2e}  NFE {row['nfe']:4d}  {walls[name, setting][-1]:6.2f} s", flush=True)
    for key, row in rows.items():
        row["wall_s"] = float(np.median(walls[key]))
    rows = list(rows.values())
    return rows, divergence_timing(flow, x, dim)


def divergence_timing(flow, x, dim, reps: int = 5) -> dict:
    """Median seconds of one exact divergence at t = 0.5: all D cotangents in one vmap, and as chunked now."""
    import scoresde.likelihood as lik

    x32, t = x.float(), torch.full((x.shape[0],), 0.5)
    out = {}
    for label, budget in (("one vmap", x.shape[0] * dim * dim), ("chunked", lik._EXACT_TRACE_ELEMENTS)):
        saved, lik._EXACT_TRACE_ELEMENTS = lik._EXACT_TRACE_ELEMENTS, budget
        try:
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                flow.drift_and_divergence(x32, t, None)
                ts.append(time.perf_counter() - t0)
        finally:
            lik._EXACT_TRACE_ELEMENTS = saved
        out[label] = float(np.median(ts))
    print(f"  exact divergence D={dim}: one vmap {out['one vmap'] * 1e3:.1f} ms, chunked "
          f"{out['chunked'] * 1e3:.1f} ms (median of {reps})", flush=True)
    return out


def matched(rows: list[dict], factor: float = 1.0) -> list[tuple[dict, dict | None]]:
    """Each song-* row with the fastest ours-* row of the same D whose mean and max error are both at
    most 1/factor of the song-* row's (factor 1: equal or better accuracy)."""
    out = []
    for base in (r for r in rows if r["method"].startswith("song")):
        ok = [r for r in rows if r["method"].startswith("ours") and r["D"] == base["D"]
              and r["mean_err"] * factor <= base["mean_err"] and r["max_err"] * factor <= base["max_err"]]
        out.append((base, min(ok, key=lambda r: r["wall_s"]) if ok else None))
    return out


def _setting(opts: dict) -> str:
    return f"{opts['steps']} steps" if "steps" in opts else f"tol {opts['rtol']:.0e}"


def _ours(score_fn, sde, x, trace, method, opts):
    res = log_likelihood(score_fn, sde, x.float(), trace=trace, method=method, **opts,
                         generator=torch.Generator().manual_seed(1))
    return res.log_p, res.nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                        help="rtol = atol of ours with dopri5 (the sweep)")
    parser.add_argument("--low-order-tols", type=float, nargs="+", default=[1e-1, 1e-2],
                        help="rtol = atol of ours with bosh3 and fehlberg2")
    parser.add_argument("--song-tols", type=float, nargs="+", default=[1e-5],
                        help="rtol = atol of Song et al.'s scheme (theirs: 1e-5)")
    parser.add_argument("--fixed-steps", type=int, nargs="*", default=[2, 3, 4, 6, 8, 16],
                        help="steps of ours with the fixed-grid midpoint and rk4 methods")
    parser.add_argument("--repeats", type=int, default=3, help="wall time: median of this many runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads ran 10x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, timings = [], {}
    for dim in args.dims:
        r, timings[dim] = run(dim, args.n, args.tols, args.low_order_tols, args.song_tols, args.fixed_steps,
                              args.repeats)
        rows += r
    print("\n| D | method | tol or steps | mean abs err (nats) | max abs err (nats) | NFE | wall (s, median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['D']} | {r['method']} | {r['setting']} | {r['mean_err']:.2e} | {r['max_err']:.2e} | "
              f"{r['nfe']} | {r['wall_s']:.2f} |")
    for factor, what in ((1, "equal or better mean and max error"), (10, "mean and max error 10x smaller")):
        print(f"\n| D | Song et al.'s scheme | its wall (s) | fastest ours at {what} | its wall (s) | speed-up |")
        print("|---|---|---|---|---|---|")
        for base, best in matched(rows, factor):
            ours = (f"{best['method']} {best['setting']} | {best['wall_s']:.2f} | "
                    f"{base['wall_s'] / best['wall_s']:.1f}x") if best else "none in the sweep | | "
            print(f"| {base['D']} | {base['method']} {base['setting']} | {base['wall_s']:.2f} | {ours} |")
    print("\n| D | exact divergence, all D cotangents in one vmap (ms) | chunked (ms) | speed-up |")
    print("|---|---|---|---|")
    for dim, t in timings.items():
        print(f"| {dim} | {t['one vmap'] * 1e3:.1f} | {t['chunked'] * 1e3:.1f} | {t['one vmap'] / t['chunked']:.1f}x |")


if __name__ == "__main__":
    main()
