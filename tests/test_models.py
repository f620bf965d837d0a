"""Networks, the parametrization wrapper and EMA, checked against exact relations.

Truths used: for x_t = alpha x0 + sigma eps, score = -eps/sigma, x0 = (x_t + sigma^2 score)/alpha
(Tweedie), v = (alpha eps - sigma x0)/sqrt(alpha^2 + sigma^2); for Gaussian data N(m, s^2 I) the
posterior mean is E[x0 | x_t] = m + alpha s^2 (x_t - alpha m) / (alpha^2 s^2 + sigma^2); the EMA after
k updates at a constant decay is decay^k theta_0 + (1 - decay) sum_{j>=1} decay^(k-j) theta_j, and with
warmup theta_0 keeps weight 1 / C(k + 9, 9).
"""

import math

import pytest
import torch
from torch import nn

from scoresde.analytic import gaussian_score_fn
from scoresde.models import (EMA, PARAMETRIZATIONS, ClassifierModel, GaussianFourierProjection, ScoreMLP,
                             ScoreModel, SinusoidalEmbedding, UNet, build_classifier, build_model, convert)
from scoresde.sdes import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from oracles import ScoreAsNet

SDES = [VPSDE(), VESDE(), CosineVPSDE(), SubVPSDE()]



def _kernel_case(d=5, B=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    eps = torch.randn(B, d, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = torch.rand(B, generator=g, dtype=torch.float64) * 40 + 0.01
    x = alpha[:, None] * x0 + sigma[:, None] * eps
    r = torch.sqrt(alpha ** 2 + sigma ** 2)[:, None]
    truth = {"eps": eps, "x0": x0, "score": -eps / sigma[:, None],
             "v": (alpha[:, None] * eps - sigma[:, None] * x0) / r}
    return x, alpha, sigma, truth


@pytest.mark.parametrize("src", PARAMETRIZATIONS)
@pytest.mark.parametrize("dst", PARAMETRIZATIONS)
def test_conversions_are_exact_for_a_known_kernel_draw(src, dst):
    x, alpha, sigma, truth = _kernel_case()
    out = convert(truth[src], src, dst, x, alpha, sigma)
    torch.testing.assert_close(out, truth[dst], rtol=1e-10, atol=1e-10)


def test_tweedie_relation_x0_from_score():
    x, alpha, sigma, truth = _kernel_case(seed=1)
    x0 = convert(truth["score"], "score", "x0", x, alpha, sigma)
    torch.testing.assert_close(x0, (x + sigma[:, None] ** 2 * truth["score"]) / alpha[:, None])


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_every_parametrization_gives_the_exact_gaussian_score(sde, parametrization):
    m, s = 0.3, 0.7
    model = ScoreModel(ScoreAsNet(sde, parametrization, gaussian_score_fn(sde, m, s)), sde, parametrization)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=g, dtype=torch.float64) * (sde.T - 1e-3) + 1e-3
    x = torch.randn(64, 3, generator=g, dtype=torch.float64) * 3
    a, sg = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    exact_score = (a * m - x) / (a ** 2 * s ** 2 + sg ** 2)
    torch.testing.assert_close(model.score(x, t), exact_score, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.score_fn()(x, t), exact_score, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.x0(x, t), m + a * s ** 2 * (x - a * m) / (a ** 2 * s ** 2 + sg ** 2),
                               rtol=1e-7, atol=1e-9)


def test_c_noise_is_a_scaled_log_snr_and_c_in_normalises_the_input():
    """For VE at sigma = 50 with data std sigma_data, the network's input has unit variance."""
    sde = VESDE()
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, c_noise, y=None):
            seen["x"], seen["c"] = x, c_noise
            return torch.zeros_like(x)

    model = ScoreModel(Probe(), sde, "eps", sigma_data=0.5)
    t = torch.ones(20000)
    x = 0.5 * torch.randn(20000, 2) + 50 * torch.randn(20000, 2)
    model(x, t)
    assert abs(seen["x"].std().item() - 1.0) < 0.02
    torch.testing.assert_close(seen["c"], torch.full((20000,), math.log(50.0) / 4))


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3)])
def test_unet_shapes(size, channels):
    net = UNet(channels, size, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16, 7, 4))
    with torch.no_grad():
        out = net(torch.randn(3, channels, size, size), torch.randn(3))
    assert out.shape == (3, channels, size, size)


def test_unet_pads_sizes_that_do_not_halve_evenly():
    net = UNet(1, 28, ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    assert net.resolutions == (32, 16, 8, 4) and net.attention_levels == (8,)
    assert net(torch.randn(2, 1, 28, 28), torch.randn(2)).shape == (2, 1, 28, 28)
    assert UNet(1, 28, ch=16, ch_mult=(1, 2, 2), attn_resolutions=(14,)).attention_levels == (14,)


def test_mlp_shapes_and_zero_init():
    net = ScoreMLP(5, hidden=32, depth=2, embed_dim=16)
    out = net(torch.randn(4, 5), torch.randn(4))
    assert out.shape == (4, 5) and torch.count_nonzero(out) == 0  # zero-initialised output layer


@pytest.mark.parametrize("make", [
    lambda: ScoreMLP(3, hidden=32, depth=2, embed_dim=16, num_classes=4),
    lambda: UNet(1, 8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_classes=4, dropout=0.0),
], ids=["mlp", "unet"])
def test_class_conditioning_and_null_label(make):
    torch.manual_seed(0)
    net = make().eval()
    for p in net.parameters():  # leave the zero initialisation so labels change the output
        nn.init.normal_(p, std=0.1)
    shape = (4, 3) if isinstance(net, ScoreMLP) else (4, 1, 8, 8)
    x, c = torch.randn(shape), torch.randn(4)
    with torch.no_grad():
        null = net(x, c, torch.full((4,), 4))
        torch.testing.assert_close(net(x, c, None), null)  # y=None is the learned null label
        assert not torch.allclose(net(x, c, torch.zeros(4, dtype=torch.long)), null)
        # per-sample: sample 0's output does not depend on its batch-mates
        torch.testing.assert_close(net(x[:1], c[:1], torch.tensor([2]))[0], net(x, c, torch.tensor([2, 0, 1, 3]))[0])
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\]"):
        net(x, c, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        net(x, c, torch.zeros(4))


def test_unconditional_net_rejects_labels():
    with pytest.raises(ValueError, match="without num_classes"):
        ScoreMLP(2)(torch.randn(3, 2), torch.randn(3), torch.zeros(3, dtype=torch.long))


def test_embeddings_match_their_formulas():
    c = torch.tensor([0.0, 0.25, -1.3])
    emb = SinusoidalEmbedding(8, max_period=10000.0)(c)
    w = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(emb, torch.cat([torch.cos(c[:, None] * w), torch.sin(c[:, None] * w)], 1))
    fourier = GaussianFourierProjection(16, scale=3.0)
    f = fourier(c)
    torch.testing.assert_close(f[:, :8], torch.sin(2 * math.pi * c[:, None] * fourier.W))
    torch.testing.assert_close(f[:, :8] ** 2 + f[:, 8:] ** 2, torch.ones(3, 8))


def test_classifier_shapes_log_prob_and_per_sample_gradient():
    torch.manual_seed(0)
    vector = build_classifier(in_channels=2, num_classes=3, hidden=32, depth=2, embed_dim=16)
    for net, x in [(vector, torch.randn(5, 2)),
                   (build_classifier(in_channels=1, num_classes=3, image_size=8, ch=16, ch_mult=(1, 2),
                                     num_res_blocks=1, dropout=0.0), torch.randn(5, 1, 8, 8))]:
        clf = ClassifierModel(net.eval(), VPSDE())
        t = torch.rand(5) * 0.9 + 0.05
        assert clf(x, t).shape == (5, 3)
        total = torch.logsumexp(torch.stack([clf.log_prob(x, t, torch.full((5,), k)) for k in range(3)]), 0)
        torch.testing.assert_close(total, torch.zeros(5), atol=1e-5, rtol=0)
        y = torch.tensor([0, 1, 2, 0, 1])
        g = clf.grad_log_prob(y)(x, t)
        xr = x[2:3].clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(clf.log_prob(xr, t[2:3], y[2:3]).sum(), xr)
        torch.testing.assert_close(g[2:3], g2, rtol=1e-5, atol=1e-7)


def test_ema_matches_the_closed_form_average():
    decay, thetas = 0.9, [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([-1.0, 4.0]),
                          torch.tensor([0.0, 2.0])]
    model = nn.Linear(2, 1, bias=False)
    model.register_buffer("steps", torch.tensor(0))
    with torch.no_grad():
        model.weight.copy_(thetas[0][None])
    ema = EMA(model, decay, warmup=False)  # the constant decay; tests/test_train_scale.py checks warmup
    for k, theta in enumerate(thetas[1:], 1):
        with torch.no_grad():
            model.weight.copy_(theta[None])
            model.steps.fill_(k)
        ema.update(model)
    k = len(thetas) - 1
    closed = decay ** k * thetas[0] + sum((1 - decay) * decay ** (k - j) * thetas[j] for j in range(1, k + 1))
    torch.testing.assert_close(ema.module.weight[0], closed)
    assert ema.module.steps.item() == k and ema.num_updates == k  # integer buffers are copied
    assert not ema.module.weight.requires_grad and not ema.module.training

    fresh = nn.Linear(2, 1, bias=False)
    fresh.register_buffer("steps", torch.tensor(0))
    restored = EMA(fresh, 0.5)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module.weight, ema.module.weight)
    assert restored.decay == decay and restored.num_updates == k
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_ema_warmup_leaves_the_initialization_its_closed_form_weight():
    """Updates that all hold theta average to theta + w_k (theta_0 - theta), where w_k, the
    initialization's weight, is the product of the decays min(d, (1 + n)/(10 + n)) applied:
    1 / C(k + 9, 9) during warmup (a plain EMA at d = 0.999 keeps 0.999^k: 13% after 2000 updates)."""
    model = nn.Linear(3, 2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    for k in (1, 2, 50):
        while ema.num_updates < k:
            ema.update(model)
        w = 1 / math.comb(k + 9, 9)
        assert ema.initial_weight == pytest.approx(w, rel=1e-12)
        for name, value in ema.module.state_dict().items():
            torch.testing.assert_close(value, trained[name] + w * (initial[name] - trained[name]),
                                       rtol=1e-6, atol=1e-7)


def test_build_model_by_name_and_its_errors():
    assert isinstance(build_model("mlp", dim=2, hidden=16), ScoreMLP)
    assert isinstance(build_model("unet", in_channels=1, image_size=8, ch=16, ch_mult=(1, 2)), UNet)
    with pytest.raises(ValueError, match="did you mean 'unet'"):
        build_model("unte", in_channels=1, image_size=8)
    with pytest.raises(ValueError, match="hiden"):
        build_model("mlp", dim=2, hiden=16)


@pytest.mark.parametrize("bad,match", [
    (lambda: ScoreModel(ScoreMLP(2), VPSDE(), "noise"), "unknown parametrization 'noise'"),
    (lambda: ScoreModel(ScoreMLP(2), VPSDE(), sigma_data=0), "sigma_data"),
    (lambda: ScoreModel(ScoreMLP(2), VPSDE()).score(torch.randn(3, 4), torch.rand(3)), r"shape \(batch, 2\)"),
    (lambda: ScoreModel(ScoreMLP(2), VPSDE()).score(torch.randn(3, 2), torch.rand(4)), r"t must have shape \(3,\)"),
    (lambda: UNet(1, 28)(torch.randn(2, 1, 32, 32), torch.rand(2)), r"shape \(batch, 1, 28, 28\)"),
    (lambda: UNet(1, 28, ch_mult=()), "ch_mult"),
    (lambda: UNet(1, 28, dropout=1.5), "dropout"),
    (lambda: ScoreMLP(2, embedding="gaussian"), "unknown embedding 'gaussian'"),
    (lambda: ScoreMLP(2, num_classes=0), "num_classes"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
