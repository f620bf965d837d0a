"""The SDE library against the truth: Monte-Carlo simulation, the kernel ODEs, exact Gaussian reversal,
DDPM/SMLD chains, plugins, and bad parameters (issue 2)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torchdiffeq
import torchsde
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde
from scoresde import CosineVPSDE, KernelSDE, SubVPSDE, VESDE, VPSDE
from scoresde.analytic import gaussian_score_fn
from scoresde.sdes import SDES


class EDMSchedule(KernelSDE):
    """A plugin defined only by its kernel: alpha = 1, sigma(t) = t (Karras et al. 2022), T = 80."""

    def __init__(self, sigma_min: float = 0.002, T: float = 80.0, N: int = 1000):
        super().__init__(N=N, T=T)
        self.sigma_min = sigma_min

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return torch.sqrt(self.sigma_min ** 2 + t ** 2)


def all_sdes():
    return [VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0), CosineVPSDE(), EDMSchedule(T=5.0)]


IDS = ["vp", "subvp", "ve", "cosine", "plugin-edm"]


class _Forward:
    """The forward SDE in torchsde's form (additive noise, flattened states)."""
    noise_type, sde_type = "additive", "ito"

    def __init__(self, sde):
        self.sde = sde

    def f(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[0]

    def g_prod(self, t, y, v):
        return self.sde.sde(y, t.expand(y.shape[0]))[1][:, None] * v


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
def test_marginal_prob_matches_monte_carlo(sde):
    """Simulate dx = f dt + g dw with torchsde from t0 and compare mean and variance at t with the kernel.

    Starting at t0 > 0 from x_{t0} ~ N(alpha(t0) x0, sigma(t0)^2) (for VE this is the sigma_min
    smoothing of the data), the exact law at t is N(alpha(t) x0, sigma(t)^2) per x0.
    """
    torch.manual_seed(0)
    K, M = 4, 4000
    x0 = torch.tensor([[-3.0, 0.5], [0.0, 0.0], [1.5, -2.0], [4.0, 4.0]], dtype=torch.float64)
    t0, t1 = 1e-3 * sde.T, 0.7 * sde.T
    T0 = torch.full((K,), t0, dtype=torch.float64)
    mean0, std0 = sde.marginal_prob(x0, T0)
    y = mean0.repeat_interleave(M, 0) + std0.repeat_interleave(M)[:, None] * torch.randn(K * M, 2, dtype=torch.float64)
    ts = torch.tensor([t0, t1], dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=t0, t1=t1, size=y.shape, dtype=y.dtype,
                                   levy_area_approximation="space-time", entropy=1)
    yt = torchsde.sdeint(_Forward(sde), y, ts, method="srk", dt=(t1 - t0) / 200, bm=bm)[-1].reshape(K, M, 2)
    mean, std = sde.marginal_prob(x0, torch.full((K,), t1, dtype=torch.float64))
    z_mean = (yt.mean(1) - mean) / (std[:, None] / math.sqrt(M))
    z_var = (yt.var(1) / std[:, None] ** 2 - 1) / math.sqrt(2 / (M - 1))
    assert z_mean.abs().max() < 4.5, z_mean
    assert z_var.abs().max() < 4.5, z_var


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drift_and_diffusion_obey_the_kernel_odes(sde, dtype):
    """d mean/dt = f mean and d var/dt = 2 f var + g^2, by central differences of the kernel (float64)."""
    t = torch.linspace(0.05, 0.95, 13, dtype=torch.float64) * sde.T
    h = 1e-6 * sde.T
    x0 = torch.full((13, 1), 1.7, dtype=torch.float64)
    (m_p, s_p), (m_m, s_m) = sde.marginal_prob(x0, t + h), sde.marginal_prob(x0, t - h)
    mean, std = sde.marginal_prob(x0, t)
    drift, g = sde.sde(mean, t)
    f = drift / mean
    torch.testing.assert_close((m_p - m_m) / (2 * h), f * mean, rtol=1e-6, atol=1e-8)
    dvar = (s_p ** 2 - s_m ** 2) / (2 * h)
    torch.testing.assert_close(dvar, 2 * f[:, 0] * std ** 2 + g ** 2, rtol=1e-5, atol=1e-8)
    # the same formulas in the requested dtype, batched over per-sample t
    x = mean.to(dtype)
    drift32, g32 = sde.sde(x, t.to(dtype))
    assert drift32.dtype == dtype and g32.dtype == dtype and g32.shape == (13,)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(g32.double(), g, rtol=tol, atol=0)


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
def test_log_snr_inverse(sde):
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64) * sde.T
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease"
    torch.testing.assert_close(lam, torch.log(sde.alpha(t) / sde.sigma(t)))
    torch.testing.assert_close(sde.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-10)


M_DATA, S_DATA = 1.5, 0.4


def _true_marginal(sde, n, t, generator):
    """Draws of the exact marginal p_t of N(m, s^2 I) data: N(alpha m, alpha^2 s^2 + sigma^2)."""
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = sde.alpha(tt).item(), sde.sigma(tt).item()
    return a * M_DATA + math.sqrt(a * a * S_DATA ** 2 + s * s) * torch.randn(n, 2, dtype=torch.float64, generator=generator)


def _check_recovers_data(x, sde, eps):
    tt = torch.tensor([eps], dtype=torch.float64)
    a, s = sde.alpha(tt).item(), sde.sigma(tt).item()
    mean, std = a * M_DATA, math.sqrt(a * a * S_DATA ** 2 + s * s)  # = N(m, s^2) up to O(eps)
    n = x.numel()
    assert abs(x.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(x.std().item() / std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
def test_probability_flow_ode_recovers_gaussian_data(sde):
    """The PF-ODE (torchdiffeq, dopri5) maps the exact p_T onto the exact p_eps."""
    g = torch.Generator().manual_seed(1)
    eps = 1e-3 * sde.T
    x_T = _true_marginal(sde, 3000, sde.T, g)
    rsde = sde.reverse(gaussian_score_fn(sde, M_DATA, S_DATA), probability_flow=True)
    ts = torch.tensor([sde.T, eps], dtype=torch.float64)
    # step_t: the last step ends exactly at eps (dopri5 otherwise steps past it and interpolates back)
    x = torchdiffeq.odeint(rsde, x_T, ts, rtol=1e-6, atol=1e-6, options={"step_t": ts[1:]})[-1]
    _check_recovers_data(x, sde, eps)
    # the Gaussian case is linear: the ODE maps each point deterministically, check it exactly
    tt = lambda v: torch.tensor([v], dtype=torch.float64)
    a_T, a_e = sde.alpha(tt(sde.T)).item(), sde.alpha(tt(eps)).item()
    sd = lambda t, a: math.sqrt(a * a * S_DATA ** 2 + sde.sigma(tt(t)).item() ** 2)
    expected = a_e * M_DATA + (x_T - a_T * M_DATA) * sd(eps, a_e) / sd(sde.T, a_T)
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
@pytest.mark.parametrize("method", ["srk", "euler"])
def test_reverse_sde_with_torchsde_recovers_gaussian_data(sde, method):
    """Integrate the reverse SDE in s = T - t with torchsde from the exact p_T."""
    g = torch.Generator().manual_seed(2)
    eps = 1e-3 * sde.T
    x_T = _true_marginal(sde, 3000, sde.T, g)
    rsde = sde.reverse(gaussian_score_fn(sde, M_DATA, S_DATA))
    s_end = sde.T - eps
    bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=x_T.shape, dtype=x_T.dtype, entropy=3,
                                   levy_area_approximation="space-time")
    steps = 200 if method == "srk" else 1000
    x = torchsde.sdeint(rsde, x_T, torch.tensor([0.0, s_end], dtype=torch.float64), method=method,
                        dt=s_end / steps, bm=bm)[-1]
    _check_recovers_data(x, sde, eps)


def test_reverse_view_on_image_shaped_states():
    """The torchsde view works on flattened states and hands score_fn the event shape."""
    sde = VPSDE()
    seen = []

    def score_fn(x, t):
        seen.append(tuple(x.shape))
        return -x

    rsde = scoresde.ReverseSDE(sde, score_fn, event_shape=(1, 2, 2))
    y = torch.randn(3, 4)
    out = rsde.f(torch.tensor(0.5), y)
    assert out.shape == (3, 4) and seen[-1] == (3, 1, 2, 2)
    # f in reversed time is minus the reverse drift at t = T - s
    drift, _ = sde.reverse(score_fn).sde(y.reshape(3, 1, 2, 2), torch.full((3,), 0.5))
    torch.testing.assert_close(out, -drift.reshape(3, 4))


def test_vp_discretize_is_the_ddpm_chain():
    """Ho et al. 2020: beta_1..beta_N = linspace(1e-4, 0.02, 1000); x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
    sde = VPSDE()
    betas = sde.discrete_betas()
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    x = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    for i in (0, 400, 999):
        t = torch.full((x.shape[0],), i / 999 if i else 1e-9, dtype=torch.float64)
        f, G = sde.discretize(x, t)
        nxt = x + f + G[:, None] * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        b = betas[i].item()
        assert abs(nxt.mean().item() - math.sqrt(1 - b) * 2.0) < 5 * math.sqrt(b / x.shape[0])
        assert abs(nxt.var().item() / b - 1) < 5 * math.sqrt(2 / x.shape[0])


def test_ve_discretize_is_the_smld_chain():
    """Song & Ermon 2019 noise levels sigma_i geometric in [0.01, 50]; x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z."""
    sde = VESDE()
    sig = sde.discrete_sigmas()
    assert sig[0].item() == pytest.approx(0.01) and sig[-1].item() == pytest.approx(50.0)
    torch.testing.assert_close(sig[1:] / sig[:-1], torch.full((999,), (5000.0) ** (1 / 999), dtype=torch.float64))
    x = torch.full((200_000, 1), -1.0, dtype=torch.float64)
    for i in (0, 500, 999):
        t = torch.full((x.shape[0],), i / 999 if i else 1e-9, dtype=torch.float64)
        f, G = sde.discretize(x, t)
        var = sig[i].item() ** 2 - (sig[i - 1].item() ** 2 if i else 0.0)
        nxt = x + f + G[:, None] * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        assert abs(nxt.mean().item() + 1.0) < 5 * math.sqrt(var / x.shape[0])
        assert abs(nxt.var().item() / var - 1) < 5 * math.sqrt(2 / x.shape[0])


@pytest.mark.parametrize("sde", all_sdes(), ids=IDS)
def test_prior(sde):
    z = sde.prior_sampling((20_000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(z.std().item() / sde.prior_std - 1) < 0.02
    expected = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


def test_register_sde_decorator(monkeypatch):
    monkeypatch.setattr(SDES, "_items", dict(SDES._items))

    @scoresde.register_sde("edm-test")
    class EDM(EDMSchedule):
        pass

    assert "edm-test" in scoresde.list_sdes()
    assert isinstance(scoresde.get_sde("edm-test", T=10.0), EDM)
    with pytest.raises(ValueError, match="already registered"):
        scoresde.register_sde("edm-test")(VPSDE)


def test_entry_point_plugin_out_of_tree(tmp_path, monkeypatch):
    """A separately installed distribution declares [scoresde.sdes]; get_sde finds it without any import."""
    pkg = tmp_path / "my_schedules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch\nfrom scoresde import KernelSDE\n\n"
        "class SigmaIsT(KernelSDE):\n"
        "    def __init__(self, T=10.0, N=100):\n        super().__init__(N=N, T=T)\n"
        "    def alpha(self, t):\n        return torch.ones_like(t)\n"
        "    def sigma(self, t):\n        return t\n")
    dist = tmp_path / "my_schedules-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-schedules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[scoresde.sdes]\nsigma_is_t = my_schedules:SigmaIsT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SDES, "_items", dict(SDES._items))
    monkeypatch.setattr(SDES, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "my_schedules", raising=False)

    assert "sigma_is_t" in scoresde.list_sdes()
    sde = scoresde.get_sde("sigma_is_t", T=5.0)
    assert type(sde).__module__ == "my_schedules" and sde.T == 5.0
    t = torch.tensor([2.0], dtype=torch.float64)
    torch.testing.assert_close(sde.g2(t), 2 * t)  # d sigma^2 / dt = 2t, f = 0


def test_unknown_sde_name_suggests():
    with pytest.raises(ValueError, match="did you mean 've'"):
        scoresde.get_sde("vee")


@pytest.mark.parametrize("ctor, kwargs, name", [
    (VESDE, dict(sigma_min=0.0), "sigma_min"),
    (VESDE, dict(sigma_min=-1.0), "sigma_min"),
    (VESDE, dict(sigma_min=1.0, sigma_max=1.0), "sigma_max"),
    (VESDE, dict(sigma_min=1.0, sigma_max=0.5), "sigma_max"),
    (VESDE, dict(sigma_max=float("inf")), "sigma_max"),
    (VPSDE, dict(beta_min=1.0, beta_max=0.5), "beta_max"),
    (VPSDE, dict(beta_min=float("nan")), "beta_min"),
    (SubVPSDE, dict(beta_max=-3.0), "beta_max"),
    (VPSDE, dict(N=0), "N"),
    (CosineVPSDE, dict(T=1.0), "T"),
])
def test_bad_parameters_name_value_and_range(ctor, kwargs, name):
    with pytest.raises(ValueError) as err:
        ctor(**kwargs)
    msg = str(err.value)
    assert name in msg and "must" in msg


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(allow_nan=True, allow_infinity=True), hi=st.floats(allow_nan=True, allow_infinity=True))
def test_hostile_sigma_ranges_are_accepted_only_when_valid(lo, hi):
    valid = math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi
    if valid:
        assert VESDE(sigma_min=lo, sigma_max=hi).sigma_max == hi
    else:
        with pytest.raises(ValueError, match="sigma_m"):
            VESDE(sigma_min=lo, sigma_max=hi)


@pytest.mark.parametrize("t", [0.0, -0.1, 1.5, float("nan")])
def test_times_outside_the_interval(t):
    sde = VPSDE()
    x = torch.zeros(2, 3)
    for call in (sde.marginal_prob, sde.sde, sde.discretize):
        with pytest.raises(ValueError, match=r"outside the allowed range \(0, T=1.0\]"):
            call(x, torch.tensor([0.5, t]))
