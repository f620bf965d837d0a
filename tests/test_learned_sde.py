"""The learned (VDM) noise schedule and its variational bound, against closed forms.

Truths used here:
  * alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma): alpha^2 + sigma^2 = 1, log(alpha/sigma) = -gamma/2;
    f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2 (checked by central differences).
  * For Gaussian data N(m, s^2 I) and the exact denoiser eps_hat = E[eps | z_t], the expected bound is
        recon  D/2 (log 2 pi + 1 + gamma_eps)
      + prior  1/2 (D (sigma_1^2 - 1 - log sigma_1^2) + alpha_1^2 D (m^2 + s^2))
      + diff.  D/2 [gamma - log(s^2 + e^gamma)] from gamma_eps to gamma_1,
    as E||eps - eps_hat||^2 = D s^2 / (s^2 + e^gamma) and (1/2) int gamma' s^2/(s^2 + e^gamma) dt is
    that antiderivative. (It tends to the entropy D/2 log(2 pi e s^2) as gamma_eps -> -inf, gamma_1 -> inf.)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde.analytic import gaussian_score_fn
from scoresde.likelihood import log_likelihood
from scoresde.losses.vdm import vdm_loss
from scoresde.models import ScoreModel
from scoresde.models.mlp import ScoreMLP
from scoresde.sampling import list_samplers, sample
from scoresde.sdes import VPSDE
from scoresde.sdes.learned import LearnedSDE

GRID = torch.linspace(1e-4, 1.0, 2001, dtype=torch.float64)


def check_schedule(sde: LearnedSDE) -> None:
    with torch.no_grad():
        g = sde.gamma(GRID)
        ends = sde.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))
        assert (g[1:] - g[:-1]).min() > 0, "gamma must be strictly increasing"
        assert torch.allclose(ends, torch.stack([sde.gamma.gamma_min, sde.gamma.gamma_max]).double(), atol=1e-6)
        a, s = sde.alpha(GRID), sde.sigma(GRID)
        assert torch.allclose(a ** 2 + s ** 2, torch.ones_like(a), atol=1e-12)
        assert torch.allclose(sde.log_snr(GRID), -g / 2, atol=1e-12)
        assert torch.allclose(torch.exp(2 * sde.log_alpha(GRID)), a ** 2, rtol=1e-10)


def test_schedule_at_construction():
    sde = LearnedSDE(gamma_min=-12.0, gamma_max=7.0, n_features=64)
    check_schedule(sde)
    assert sde.prior_std == 1.0 and sde.T == 1.0
    with torch.no_grad():
        ends = sde.gamma(torch.tensor([0.0, 1.0]))
    assert torch.allclose(ends, torch.tensor([-12.0, 7.0]), atol=1e-5)


def test_drift_and_diffusion_from_the_kernel():
    sde = LearnedSDE(n_features=64)
    t, h = GRID[10:-10:50], 1e-5
    with torch.no_grad():
        dlog_alpha = (sde.log_alpha(t + h) - sde.log_alpha(t - h)) / (2 * h)
        dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
        dgamma = (sde.gamma(t + h) - sde.gamma(t - h)) / (2 * h)
        f, g2 = sde.f(t), sde.g2(t)
        assert torch.allclose(sde.gamma_and_derivative(t)[1], dgamma, rtol=1e-6)
        assert torch.allclose(f, dlog_alpha, rtol=1e-6, atol=1e-9)
        assert torch.allclose(g2, dvar - 2 * f * sde.sigma(t) ** 2, rtol=1e-6, atol=1e-9)
        # the per-sample closed form equals the shared-time fast path
        t_rep = t[3].repeat(5)
        assert torch.allclose(sde.f(t_rep), f[3].expand(5))


def test_t_of_log_snr_inverts_log_snr():
    sde = LearnedSDE(n_features=64)
    t = GRID[::100]
    with torch.no_grad():
        assert torch.allclose(sde.t_of_log_snr(sde.log_snr(t)), t, atol=1e-9)


class ExactEps(nn.Module):
    """eps_hat = E[eps | z_t] = -sigma_t score_t for Gaussian data, as a model in the 'eps' parametrization."""

    parametrization = "eps"
    num_classes = None

    def __init__(self, sde, m, s):
        super().__init__()
        self.sde, self.score = sde, gaussian_score_fn(sde, m, s)

    def forward(self, x, t, y=None):
        return -self.sde.sigma(t)[:, None] * self.score(x, t)


def test_vdm_bound_closed_form_for_gaussian_data():
    sde, m, s, D, n, eps = LearnedSDE(n_features=64), 0.3, 0.5, 2, 8192, 1e-5
    x = m + s * torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bpd = vdm_loss(ExactEps(sde, m, s), sde, x, levels=None, eps=eps, reduce=False,
                       generator=torch.Generator().manual_seed(1))
        g_eps, g_1 = sde.gamma(torch.tensor([eps, 1.0], dtype=torch.float64))
    s2_1, a2_1 = torch.sigmoid(g_1), torch.sigmoid(-g_1)
    anti = lambda g: g - torch.log(s ** 2 + torch.exp(g))  # noqa: E731
    nats = (0.5 * D * (math.log(2 * math.pi) + 1 + g_eps)
            + 0.5 * (D * (s2_1 - 1 - torch.log(s2_1)) + a2_1 * D * (m ** 2 + s ** 2))
            + 0.5 * D * (anti(g_1) - anti(g_eps)))
    expected = nats / (D * math.log(2))
    se = bpd.std() / math.sqrt(n)
    assert (bpd.mean() - expected).abs() < 4 * se
    entropy_bpd = 0.5 * math.log(2 * math.pi * math.e * s ** 2) / math.log(2)
    assert expected > entropy_bpd and expected - entropy_bpd < 0.01  # a valid, nearly tight bound
    # quantized data: the same bound shifted by the exact log-Jacobian of x = 2 (v + u)/17 - 1
    with torch.no_grad():
        bpd17 = vdm_loss(ExactEps(sde, m, s), sde, x, levels=17, eps=eps, reduce=False,
                         generator=torch.Generator().manual_seed(1))
    assert torch.allclose(bpd17 - bpd, torch.full_like(bpd, math.log2(17 / 2)))


def test_joint_training_keeps_the_schedule_monotone():
    torch.manual_seed(0)
    sde = LearnedSDE(gamma_min=-8.0, gamma_max=4.0, n_features=64)
    model = ScoreModel(ScoreMLP(dim=2, hidden=64, depth=2), sde, parametrization="eps")
    opt = torch.optim.Adam(list(model.net.parameters()) + list(sde.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    start = [p.detach().clone() for p in sde.parameters()]
    losses = []
    for step in range(150):
        x = torch.randn(256, 2, generator=gen) * 0.3 + torch.tensor([0.5, -0.2])
        loss = vdm_loss(model, sde, x, levels=None, generator=gen)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = [p.grad for p in sde.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert sde.gamma.gamma_min.grad.abs() > 0 and sde.gamma._gap.grad.abs() > 0
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < sum(losses[:20])  # the bound went down
    assert any(not torch.equal(a, b) for a, b in zip(start, sde.parameters()))  # the schedule trained
    check_schedule(sde)


def test_every_sampler_and_the_likelihood_work_unchanged():
    """A kernel-only SDE: samplers reach N(m, s^2) with the exact score; the ODE likelihood is exact.

    gamma_max = 10 makes the prior mismatch alpha_1 m small for the moment checks (VDM's 5 leaves
    alpha_1 = 0.08, which shifts the mean by 0.02); gamma_min = -10 keeps annealed Langevin's step eps_lr sigma_1^2/sigma_eps^2 stable.
    """
    sde, m, s = LearnedSDE(gamma_min=-10.0, gamma_max=10.0, n_features=64), 0.5, 0.4
    score = gaussian_score_fn(sde, m, s)
    for method in list_samplers():
        steps = None if method == "ode" else 100
        x = sample(score, sde, (2000, 2), method=method, steps=steps,
                   generator=torch.Generator().manual_seed(0))
        assert abs(x.mean().item() - m) < 0.03, method
        # pc's Langevin corrector (snr 0.16, Song et al.'s image setting) over-disperses 2-D data at
        # 100 steps under VPSDE just the same (std 0.50)
        assert abs(x.std().item() - s) < (0.12 if method == "pc" else 0.04), method
    # the flow of Gaussian data is affine: x_T = alpha_1 m + sqrt(v_1 / v_eps)(x - alpha_eps m), and
    # log_likelihood = log N(x_T; 0, I) + (D/2) log(v_1 / v_eps), v_t = alpha_t^2 s^2 + sigma_t^2
    x = m + s * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t = torch.tensor([1e-5, 1.0], dtype=torch.float64)
        a, v = sde.alpha(t), sde.alpha(t) ** 2 * s ** 2 + sde.sigma(t) ** 2
    x_T = a[1] * m + torch.sqrt(v[1] / v[0]) * (x - a[0] * m)
    truth = sde.prior_logp(x_T) + torch.log(v[1] / v[0])
    res = log_likelihood(score, sde, x)
    assert (res.log_p - truth).abs().max() < 2e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="gamma_max"):
        LearnedSDE(gamma_min=1.0, gamma_max=1.0)
    with pytest.raises(ValueError, match="n_features"):
        LearnedSDE(n_features=0)
    sde = LearnedSDE(n_features=8)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="learned schedule"):
        vdm_loss(ExactEps(VPSDE(), 0.0, 1.0), VPSDE(), x, levels=None)
    with pytest.raises(ValueError, match="t_sampling"):
        vdm_loss(ExactEps(sde, 0.0, 1.0), sde, x, levels=None, t_sampling="importance")
    with pytest.raises(ValueError, match="levels"):
        vdm_loss(ExactEps(sde, 0.0, 1.0), sde, x, levels=1)
    with pytest.raises(ValueError, match="x0"):
        vdm_loss(ExactEps(sde, 0.0, 1.0), sde, torch.zeros(4, dtype=torch.long), levels=None)


# -- through the trainer: sde "learned" + loss "vdm" ----------------------------------------------
VDM_DIGITS = ["data.name=digits", "sde.name=learned", "sde.n_features=16", "train.loss=vdm",
              "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
              "model.attn_resolutions=[]", "model.dropout=0.0", "train.batch_size=16", "train.steps=6",
              "train.ckpt_every=3", "train.keep_last=10", "train.log_every=3", "train.tensorboard=false",
              "train.warmup=1", "train.lr=1e-2", "train.ema_decay=0.5"]


def test_trainer_learns_the_schedule_jointly_and_resumes_it(tmp_path):
    from scoresde.config import load_config
    from scoresde.run import load_run
    from scoresde.train import Trainer, parse_args, prepare, train_loop

    cfg = load_config(None, VDM_DIGITS)
    full = Trainer(cfg)
    # the bound is in bits/dim of the 17-level digits, on the [-1, 1] scaling the model trains on
    assert full.loss_kwargs["levels"] == 17 and full.loss_kwargs["data_range"] == (-1.0, 1.0)
    sde_params = {id(p) for p in full.sde.parameters()}
    in_optimizer = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    assert sde_params and sde_params <= in_optimizer
    start = {k: v.clone() for k, v in full.sde.state_dict().items()}
    train_loop(full, tmp_path / "full", progress=False)

    raw, ema = full.model.sde, full.ema.module.sde
    assert raw is full.sde and ema is not raw
    assert any(not torch.equal(start[k], v) for k, v in raw.state_dict().items()), "gamma did not train"
    # EMA with decay 1/2 over 6 updates: theta_ema = sum_j 2^-(7-j) theta_j / (1 - 2^-6) differs from theta_6
    assert any(not torch.equal(ema.state_dict()[k], v) for k, v in raw.state_dict().items())
    for sde in (raw, ema):
        check_schedule(sde)  # strictly increasing gamma, alpha^2 + sigma^2 = 1 after training

    # resume from step 3 == the uninterrupted run, gamma included (raw and EMA), bitwise on the CPU
    cfg2, _, state = prepare(parse_args(["--resume", str(tmp_path / "full" / "ckpt_00000003.pt")]))
    resumed = Trainer(cfg2)
    resumed.load_state_dict(state)
    assert resumed.step_count == 3
    train_loop(resumed, tmp_path / "resumed", progress=False)
    for a, b in ((resumed.model.sde, raw), (resumed.ema.module.sde, ema)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k

    # evaluation loads the EMA schedule with the EMA network
    model = load_run(tmp_path / "full").model
    with torch.no_grad():
        assert torch.equal(model.sde.gamma(GRID.float()), ema.gamma(GRID.float()))
