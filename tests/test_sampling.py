"""Samplers against the truth: exact Gaussian-mixture scores, whose samples must match the mixture.

Truth used: data p_0 = sum_k w_k N(mu_k, s_k^2 I) has the exact perturbed score for every kernel SDE
(scoresde.analytic); a correct sampler driven by it draws from p_0 (up to eps and the step error).
Checks: the sliced-Wasserstein distance to true draws is within the noise floor of two true draws,
each component's weight and std match (w_k, s_k), Tweedie's formula is exact on Gaussians.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.analytic import GaussianMixture, gaussian_score_fn
from scoresde.metrics import sliced_wasserstein
from scoresde.sampling import METHODS, register_sampler, sample, time_grid
from scoresde.sdes import VESDE, VPSDE

N = 2000
MIX = GaussianMixture([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], [0.5, 1.0, 0.3], [0.5, 0.3, 0.2])
SDES = {"vp": VPSDE(), "ve": VESDE(sigma_min=0.01, sigma_max=50.0)}



@pytest.fixture(scope="module")
def floor():
    """SW distance between two independent true draws of size N (the noise floor), max of 3 pairs."""
    vals = []
    for i in range(3):
        a, _ = MIX.sample(N, torch.Generator().manual_seed(100 + 2 * i))
        b, _ = MIX.sample(N, torch.Generator().manual_seed(101 + 2 * i))
        vals.append(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0)))
    return max(vals)


def component_stats(x: torch.Tensor):
    """Assign each point to its most probable component under p_0; return each component's share
    and RMS distance to its mean per coordinate (the same statistic is computed on true draws)."""
    x = x.double()
    d2 = torch.cdist(x, MIX.means).pow(2)
    logp = torch.log(MIX.weights) - MIX.dim * torch.log(MIX.stds) - d2 / (2 * MIX.stds ** 2)
    k = logp.argmax(1)
    share = torch.stack([(k == j).double().mean() for j in range(len(MIX.weights))])
    std = torch.stack([(d2[k == j, j].mean() / MIX.dim).sqrt() for j in range(len(MIX.weights))])
    return share, std


@pytest.fixture(scope="module")
def truth():
    """Noise floor (largest SW distance between two independent true N-draws, of 3 pairs) and the
    component statistics of 40,000 true draws."""
    vals = []
    for i in range(3):
        a, _ = MIX.sample(N, torch.Generator().manual_seed(100 + 2 * i))
        b, _ = MIX.sample(N, torch.Generator().manual_seed(101 + 2 * i))
        vals.append(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0)))
    big, _ = MIX.sample(40_000, torch.Generator().manual_seed(11))
    return max(vals), component_stats(big)


def check_matches_mixture(x: torch.Tensor, truth):
    floor, (share_true, std_true) = truth
    x = x.double()
    assert torch.isfinite(x).all()
    ref, _ = MIX.sample(N, torch.Generator().manual_seed(7))
    sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    assert sw < 1.6 * floor, f"SW {sw:.3f} vs noise floor {floor:.3f}"
    share, std = component_stats(x)
    tol = 4 * (share_true * (1 - share_true) / N).sqrt() + 0.01
    assert ((share - share_true).abs() < tol).all(), (share, share_true)
    assert ((std / std_true - 1).abs() < 0.08).all(), (std, std_true)


# method, steps, options: the documented step counts used for the distribution checks
CASES = [
    ("euler_maruyama", 500, {}),
    ("reverse_diffusion", 500, {}),
    ("ancestral", 500, {}),
    ("pc", 300, {}),
    ("pc", 200, {"predictor": None, "n_corrector": 10, "snr": 0.3}),
    ("annealed_langevin", 20, {"n_steps_each": 100}),
    ("torchsde", 100, {"solver": "srk"}),
    ("ode", None, {}),
    ("ode", 30, {"solver": "rk4"}),
    ("ddim", 100, {}),
    ("ddim", 100, {"eta": 1.0}),
    ("ddim", 100, {"eta": 0.5}),
    ("dpmpp_2m_sde", 50, {}),
    ("dpmpp_3m_sde", 50, {}),
    ("edm", 30, {}),
    ("edm", 60, {"S_churn": 10}),
    ("edm", 100, {"S_churn": 40, "S_tmin": 0.05, "S_tmax": 50, "S_noise": 1.003}),  # EDM's ImageNet settings
    ("dpmpp_2m", 50, {}),
    ("dpmpp_3m", 30, {}),
    ("dpmpp_3m", 30, {"schedule": "karras"}),
    ("unipc", 30, {}),
    ("unipc", 30, {"order": 2, "schedule": "karras", "lower_order_final": True}),
    ("repaint", 500, {"resample": 2}),  # without inpainting: an ancestral sampler redoing each step
]


def test_every_builtin_method_has_a_distribution_check():
    """A sampler added to the registry's builtins must be added to CASES too."""
    builtin = {name for name in METHODS.names() if METHODS.get(name).__module__.startswith("scoresde.")}
    assert builtin <= {method for method, _, _ in CASES}, builtin - {method for method, _, _ in CASES}


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("method,steps,options", CASES, ids=lambda c: str(c) if not isinstance(c, dict) else
                         "-".join(f"{k}={v}" for k, v in c.items()))
def test_samples_match_mixture(sde_name, method, steps, options, truth):
    sde = SDES[sde_name]
    x = sample(MIX.score_fn(sde), sde, (N, 2), method=method, steps=steps,
               generator=torch.Generator().manual_seed(3), **options)
    check_matches_mixture(x, truth)


@pytest.mark.parametrize("corrector", ["ald", "langevin"])
def test_pc_correctors_in_high_dimension(corrector):
    """Both correctors on a 32-D mixture, where |score|^2 ~ D / sigma^2: weights 1/4, stds 0.5 (±5%)."""
    gm = GaussianMixture.ring(4, 4.0, 0.5, dim=32)
    sde = SDES["vp"]
    x = sample(gm.score_fn(sde), sde, (1000, 32), method="pc", steps=300, corrector=corrector,
               generator=torch.Generator().manual_seed(3)).double()
    k = torch.cdist(x, gm.means).argmin(1)
    for j in range(4):
        assert abs((k == j).double().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 1000)
        assert abs((x[k == j] - gm.means[j]).std().item() / 0.5 - 1) < 0.05


def test_wrong_score_is_detected(truth):
    """The check has power: a score off by 20% (a too-wide p_t) fails it."""
    sde = SDES["vp"]
    score = MIX.score_fn(sde)
    x = sample(lambda x, t: 0.8 * score(x, t), sde, (N, 2), method="dpmpp_2m", steps=50,
               generator=torch.Generator().manual_seed(3))
    with pytest.raises(AssertionError):
        check_matches_mixture(x, truth)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_tweedie_denoise_is_exact_on_gaussians(sde_name):
    """For N(m, s^2) data, E[x0 | x_t] = m + alpha s^2 (x - alpha m) / (alpha^2 s^2 + sigma^2)."""
    from scoresde.sampling import tweedie_denoise
    sde, m, s = SDES[sde_name], 0.7, 0.3
    x = torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    a, sg = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    want = m + a * s ** 2 * (x - a * m) / (a ** 2 * s ** 2 + sg ** 2)
    got = tweedie_denoise(gaussian_score_fn(sde, m, s), sde, x, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_same_generator_same_samples_and_shared_x_T():
    sde = SDES["vp"]
    kw = dict(method="euler_maruyama", steps=20)
    a = sample(MIX.score_fn(sde), sde, (16, 2), generator=torch.Generator().manual_seed(5), **kw)
    b = sample(MIX.score_fn(sde), sde, (16, 2), generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(1))
    c = sample(MIX.score_fn(sde), sde, method="ddim", steps=10, x_T=x_T)
    d = sample(MIX.score_fn(sde), sde, method="ddim", steps=10, x_T=x_T.clone())
    assert torch.equal(c, d)


@pytest.mark.parametrize("method,options", [("ddim", {}), ("dpmpp_3m", {}), ("ode", {"solver": "rk4"}),
                                            ("euler_maruyama", {}), ("unipc", {})])
def test_result_does_not_depend_on_batch_mates(method, options):
    """Deterministic solvers (and stochastic ones given the same noise) act on each sample alone."""
    sde = SDES["ve"]
    x_T = sde.prior_sampling((12, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if method == "euler_maruyama":  # the noise is drawn per batch: compare noise-free drift steps
        options = {}
        score = MIX.score_fn(sde)
        full = sample(score, sde, method="ode", steps=8, solver="euler", x_T=x_T)
        part = sample(score, sde, method="ode", steps=8, solver="euler", x_T=x_T[:3])
    else:
        full = sample(MIX.score_fn(sde), sde, method=method, steps=8, x_T=x_T, **options)
        part = sample(MIX.score_fn(sde), sde, method=method, steps=8, x_T=x_T[:3], **options)
    torch.testing.assert_close(full[:3], part, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,options,nfe", [
    ("ddim", {}, 10 + 1), ("dpmpp_2m", {}, 10 + 1), ("euler_maruyama", {}, 10 + 1), ("unipc", {}, 10 + 1),
    ("ode", {"solver": "rk4"}, 4 * 10 + 1), ("ode", {"solver": "midpoint"}, 2 * 10 + 1),
    ("pc", {"n_corrector": 2}, 3 * 10 + 1), ("annealed_langevin", {"n_steps_each": 3}, 3 * 10 + 1),
])
def test_nfe_is_counted(method, options, nfe):
    """NFE = score evaluations of the solver plus one for the final Tweedie step."""
    sde = SDES["vp"]
    _, info = sample(MIX.score_fn(sde), sde, (4, 2), method=method, steps=10, return_info=True, **options)
    assert info.nfe == nfe and info.method == method


def test_adaptive_ode_nfe_follows_dopri5_bookkeeping():
    """dopri5 (FSAL, 6 new evaluations a step) with the first step given: NFE = 1 + 6 (accepted +
    rejected) (torchdiffeq's 2 + 6k less the evaluation that chooses the first step), +1 denoise;
    so NFE = 2 mod 6."""
    sde = SDES["vp"]
    _, info = sample(MIX.score_fn(sde), sde, (64, 2), method="ode", return_info=True)
    assert info.nfe % 6 == 2 and info.nfe > 30


def test_adaptive_ode_controls_every_samples_error():
    """Per-sample error norm: every sample (not just the batch RMS) is within the tolerance scale of
    a tight reference. One hard sample among many easy ones: the batch RMS norm would dilute it."""
    from torchdiffeq import odeint
    sde = SDES["ve"]
    score = MIX.score_fn(sde)
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    flow = sde.reverse(score, probability_flow=True)
    ref = odeint(flow, x_T, torch.tensor([1.0, 1e-3], dtype=torch.float64), method="dopri8",
                 rtol=1e-11, atol=1e-11)[-1]
    x = sample(score, sde, method="ode", x_T=x_T, rtol=1e-4, atol=1e-4, denoise=False)
    err = (x - ref).norm(dim=1)
    assert err.max() < 5e-2, err.max()


def test_schedules():
    """Grids run from T down to eps; log_snr is uniform in lambda; karras follows EDM eq. 5 in sigma/alpha."""
    sde, eps, n = SDES["vp"], 1e-3, 10
    for name in ["uniform_t", "log_snr", "karras"]:
        ts = time_grid(sde, n, eps, name)
        assert ts.shape == (n + 1,) and ts[0] == sde.T and ts[-1] == eps and (ts.diff() < 0).all()
    lam = sde.log_snr(time_grid(sde, n, eps, "log_snr"))
    torch.testing.assert_close(lam.diff(), torch.full((n,), float(lam[-1] - lam[0]) / n, dtype=torch.float64))
    ts = time_grid(sde, n, eps, "karras")
    s = torch.exp(-sde.log_snr(ts))
    smax, smin, rho = s[0], s[-1], 7.0
    want = (smax ** (1 / rho) + torch.arange(n + 1, dtype=torch.float64) / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(s, want, rtol=1e-8, atol=0)


def test_kernel_chain_is_smld_chain_on_its_grid():
    """For VE on the grid t_i = i/(N-1) the kernel transition G^2 = sigma_i^2 - sigma_{i-1}^2 is sde.discretize's."""
    from scoresde.sampling.sde_solvers import kernel_transition
    sde = VESDE(N=50)
    for i in [1, 10, 49]:
        t, s = torch.tensor(i / 49, dtype=torch.float64), torch.tensor((i - 1) / 49, dtype=torch.float64)
        a, g2 = kernel_transition(sde, s, t)
        _, G = sde.discretize(torch.zeros(1, 1, dtype=torch.float64), t[None])
        assert a == 1.0 and math.isclose(g2, float(G[0]) ** 2, rel_tol=1e-9)


def test_user_registered_sampler():
    name = "test_plain_euler_ode"
    if name not in METHODS:
        @register_sampler(name)
        def plain(score_fn, sde, x, *, steps, eps, generator, progress, project):
            ts = time_grid(sde, steps or 10, eps)
            flow = sde.reverse(score_fn, probability_flow=True)
            for t, s in zip(ts[:-1], ts[1:]):
                x = x + flow(t.to(x.dtype), x) * float(s - t)
            return x, {"steps": len(ts) - 1}
    sde = SDES["vp"]
    x_T = torch.randn(5, 2)
    a = sample(MIX.score_fn(sde), sde, method=name, steps=7, x_T=x_T)
    b = sample(MIX.score_fn(sde), sde, method="ode", solver="euler", steps=7, x_T=x_T)
    torch.testing.assert_close(a, b)


# -- errors at the boundary ---------------------------------------------------------------------
def _score(x, t):
    return -x


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"method": "eular_maruyama"}, ValueError, "did you mean 'euler_maruyama'"),
    ({"method": "ddim", "steps": 0}, ValueError, "steps=0"),
    ({"method": "ddim", "steps": 2.5}, TypeError, "steps"),
    ({"method": "ddim", "eps": 0.0}, ValueError, "eps=0.0"),
    ({"method": "ddim", "eps": 1.0}, ValueError, "eps=1.0"),
    ({"method": "ddim", "x_T": torch.zeros(4, 3)}, ValueError, r"x_T has shape \(4, 3\)"),
    ({"method": "ddim", "x_T": torch.zeros(4, 2, 1)}, ValueError, r"x_T has shape \(4, 2, 1\)"),
    ({"method": "ode", "steps": 10}, ValueError, "adaptive"),
    ({"method": "ode", "solver": "rk5"}, ValueError, "unknown ode solver"),
    ({"method": "torchsde", "solver": "foo"}, ValueError, "unknown torchsde solver"),
    ({"method": "pc", "predictor": "foo"}, ValueError, "unknown predictor"),
    ({"method": "dpmpp_2m", "schedule": "cosine"}, ValueError, "unknown schedule"),
    ({"method": "pc", "snr": -1}, ValueError, "snr"),
    ({"method": "pc", "corrector": "ALD"}, ValueError, r"unknown corrector 'ALD'; allowed: 'ald'"),
    ({"method": "ddim", "eta": -0.1}, ValueError, r"eta=-0.1 is not allowed"),
    ({"method": "dpmpp_2m_sde", "eta": 1.5}, ValueError, r"eta=1.5 is not allowed: it must lie in \[0, 1\]"),
    ({"method": "edm", "S_churn": -1}, ValueError, r"S_churn=-1 is not allowed"),
    ({"method": "edm", "S_tmin": 2.0, "S_tmax": 1.0}, ValueError, r"S_tmax=1.0 is not allowed: .* >= S_tmin=2.0"),
    ({"method": "edm", "S_noise": 0}, ValueError, r"S_noise=0 is not allowed"),
    ({"method": "edm", "S_tmin": float("nan")}, ValueError, r"S_tmin=nan is not allowed"),
    ({"method": "unipc", "order": 5}, ValueError, r"order=5 is not allowed.*1, 2, 3, 4"),
    ({"method": "ddim", "guidance": lambda x, t: x[:, :1]}, ValueError, "shaped like x"),
    ({"method": "ddim", "guidance": lambda x, t: x * float("nan")}, ValueError, "non-finite"),
    ({"method": "ddim", "guidance": 3}, TypeError, "guidance"),
])
def test_bad_input_is_rejected(kwargs, exc, match):
    sde = SDES["vp"]
    with pytest.raises(exc, match=match):
        sample(_score, sde, (4, 2), **kwargs)


def test_non_finite_score_is_reported():
    with pytest.raises(ValueError, match="score_fn returned non-finite"):
        sample(lambda x, t: x / 0, SDES["vp"], (4, 2), method="ddim", steps=3)
    with pytest.raises(ValueError, match="shaped like x"):
        sample(lambda x, t: x.sum(1), SDES["vp"], (4, 2), method="euler_maruyama", steps=3)


M = 1000  # MMD's cost grows as M^2 (about 1 s at M = 1000)


@pytest.fixture(scope="module")
def mmd_floor():
    """Largest |MMD^2| (unbiased, so it scatters around 0) between two independent true M-draws, of 8 pairs."""
    from scoresde.metrics import mmd
    return max(abs(mmd(MIX.sample(M, torch.Generator().manual_seed(200 + 2 * i))[0],
                       MIX.sample(M, torch.Generator().manual_seed(201 + 2 * i))[0])) for i in range(8))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_pc_default_is_within_the_noise_floor(sde_name, truth, mmd_floor):
    """pc with every default (1000 steps, reverse_diffusion + the 'ald' corrector at snr 0.16): SW to
    true draws within 1.6x its noise floor, MMD (of M of the samples) within 1.5x, every mode's width
    within 8%. The 'langevin' corrector
    at the same snr leaves VP's modes 11-29% too wide in 2-D (langevin.py), which this check rejects."""
    from scoresde.metrics import mmd
    sde = SDES[sde_name]
    x = sample(MIX.score_fn(sde), sde, (N, 2), method="pc", generator=torch.Generator().manual_seed(3))
    check_matches_mixture(x, truth)
    ref, _ = MIX.sample(M, torch.Generator().manual_seed(7))
    assert mmd(x[:M].double(), ref) < 1.5 * mmd_floor
    if sde_name == "vp":
        x = sample(MIX.score_fn(sde), sde, (N, 2), method="pc", corrector="langevin",
                   generator=torch.Generator().manual_seed(3))
        with pytest.raises(AssertionError):
            check_matches_mixture(x, truth)
