"""Stochastic samplers and pc's correctors on the exact scores of a 2-D Gaussian mixture.

For each sampler: sliced Wasserstein distance and MMD^2 of 4000 samples to 4000 true draws, beside
their noise floors (the largest of 8 pairs of independent true draws), and each mode's width over the
true width (1.00 = right; above = over-dispersed). Run:
    OMP_NUM_THREADS=1 python experiments/bench/stochastic_samplers.py
"""

from __future__ import annotations

import torch

from scoresde.analytic import GaussianMixture
from scoresde.metrics import mmd, sliced_wasserstein
from scoresde.sampling import sample
from scoresde.sdes import VESDE, VPSDE

N = 4000
MIX = GaussianMixture([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], [0.5, 1.0, 0.3], [0.5, 0.3, 0.2])
SDES = {"VP": VPSDE(), "VE": VESDE(sigma_min=0.01, sigma_max=50.0)}
CASES = [
    ("pc, corrector 'langevin' (old default)", "pc", None, {"corrector": "langevin"}),
    ("pc, corrector 'ald' (default)", "pc", None, {}),
    ("pc, 'langevin' only (no predictor)", "pc", None, {"corrector": "langevin", "predictor": None}),
    ("pc, 'ald' only (no predictor)", "pc", None, {"predictor": None}),
    ("ddim eta=1", "ddim", 100, {"eta": 1.0}),
    ("ddim eta=0.5", "ddim", 100, {"eta": 0.5}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", 50, {}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", 50, {}),
    ("edm, S_churn=0", "edm", 30, {}),
    ("edm, S_churn=10", "edm", 60, {"S_churn": 10}),
]


def mode_widths(x):
    """Each mode's RMS radius per coordinate over the truth's, points assigned to their likeliest mode."""
    d2 = torch.cdist(x.double(), MIX.means).pow(2)
    k = (torch.log(MIX.weights) - MIX.dim * torch.log(MIX.stds) - d2 / (2 * MIX.stds ** 2)).argmax(1)
    return [float((d2[k == j, j].mean() / MIX.dim).sqrt() / MIX.stds[j]) for j in range(len(MIX.weights))]


def main():
    pairs = [(MIX.sample(N, torch.Generator().manual_seed(100 + 2 * i))[0],
              MIX.sample(N, torch.Generator().manual_seed(101 + 2 * i))[0]) for i in range(8)]
    sw_floor = max(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0)) for a, b in pairs)
    mmd_floor = max(abs(mmd(a, b)) for a, b in pairs)
    ref, _ = MIX.sample(N, torch.Generator().manual_seed(7))
    print(f"noise floors (N = {N}): SW {sw_floor:.3f}, |MMD^2| {mmd_floor:.2e}\n")
    print("| sampler | steps | SDE | SW | MMD^2 | mode widths / true |")
    print("|---|---|---|---|---|---|")
    for label, method, steps, options in CASES:
        for name, sde in SDES.items():
            x = sample(MIX.score_fn(sde), sde, (N, 2), method=method, steps=steps,
                       generator=torch.Generator().manual_seed(3), **options).double()
            sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
            widths = ", ".join(f"{w:.2f}" for w in mode_widths(x))
            print(f"| {label} | {steps or 1000} | {name} | {sw:.3f} | {mmd(x, ref):.2e} | {widths} |", flush=True)


if __name__ == "__main__":
    main()
