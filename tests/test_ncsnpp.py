"""NCSN++ / DDPM++: parameter counts equal score_sde's published models exactly, every option of
its configs builds and runs, bad options are named."""

from __future__ import annotations

import pytest
import torch

from scoresde.models import MODELS, DDPMpp, NCSNpp, ScoreModel, build_model
from scoresde.sdes import VPSDE


def score_sde_count(net: NCSNpp) -> int:
    """Parameters as score_sde counts them: its fixed Fourier frequencies W are a frozen nn.Parameter
    (a buffer here), so they are in its totals."""
    extra = net.fourier.W.numel() if net.fourier is not None else 0
    return sum(p.numel() for p in net.parameters()) + extra


@pytest.mark.parametrize("build,expected", [
    (lambda: DDPMpp(), 61_804_419),                      # vp (and subvp) / cifar10_ddpmpp_continuous
    (lambda: NCSNpp(), 62_758_915),                      # ve / cifar10_ncsnpp_continuous
    (lambda: DDPMpp(num_res_blocks=8), 106_632_579),     # vp / cifar10_ddpmpp_deep_continuous
], ids=["ddpmpp", "ncsnpp", "ddpmpp_deep"])
def test_parameter_counts_equal_score_sde(build, expected):
    # the totals score_sde_pytorch's NCSNpp(config) has for these configs (Song et al. 2021, Table 3:
    # 61.8M / 62.8M / 106.6M)
    with torch.device("meta"):
        net = build()
    assert score_sde_count(net) == expected


def test_registered_names_build_the_two_families():
    assert MODELS.get("ncsnpp") is NCSNpp and MODELS.get("ddpmpp") is DDPMpp
    net = build_model("ddpmpp", in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4,))
    assert net.embedding_type == "positional" and not net.down[0].blocks[0].fir


SMALL = dict(in_channels=2, image_size=16, nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
OPTIONS = [
    dict(),                                                               # NCSN++ defaults
    dict(resblock_type="ddpm", fir=False, progressive="residual", progressive_input="input_skip",
         progressive_combine="cat", embedding_type="positional"),
    dict(resblock_type="ddpm", fir=True, resamp_with_conv=True, progressive="residual",
         progressive_input="residual", nonlinearity="elu", skip_rescale=False),
    dict(fir=True, resamp_with_conv=False, progressive="output_skip", progressive_input="input_skip",
         init_scale=0.5, nonlinearity="lrelu", centered=False),
    dict(conditional=False, dropout=0.0, nonlinearity="relu", fir_kernel=(1, 2, 1)),
]


@pytest.mark.parametrize("options", OPTIONS, ids=[str(i) for i in range(len(OPTIONS))])
def test_every_option_runs_forward_and_backward(options):
    torch.manual_seed(0)
    net = NCSNpp(**{**SMALL, **options})
    x = torch.randn(3, 2, 16, 16, requires_grad=True)
    out = net(x, torch.tensor([0.1, 1.0, 2.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("size,ch_mult", [(32, (1, 2, 2, 2)), (64, (1, 2, 2, 2, 2)), (128, (1, 1, 2, 2, 2, 2)),
                                          (256, (1, 1, 2, 2, 2, 2, 2))])
def test_image_sizes_32_to_256(size, ch_mult):
    # score_sde's CelebA-HQ / LSUN 256 config layout: 7 levels, attention at 16
    with torch.device("meta"):
        net = NCSNpp(image_size=size, ch_mult=ch_mult, num_res_blocks=2, progressive="output_skip",
                     progressive_input="input_skip")
        out = net(torch.empty(1, 3, size, size), torch.empty(1))
    assert out.shape == (1, 3, size, size)
    assert net.resolutions[-1] == size // 2 ** (len(ch_mult) - 1)


def test_class_conditioning_and_the_null_label():
    torch.manual_seed(0)
    net = NCSNpp(**SMALL, num_classes=3, init_scale=1.0).eval()   # non-zero last layers: labels show
    x, c = torch.randn(2, 2, 16, 16), torch.tensor([0.5, 0.5])
    a, b = net(x, c, torch.tensor([0, 1])), net(x, c, torch.tensor([0, 0]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    torch.testing.assert_close(net(x, c), net(x, c, torch.tensor([3, 3])))   # None = null label 3
    with pytest.raises(ValueError, match=r"labels y must be integers in \[0, 3\]"):
        net(x, c, torch.tensor([0, 4]))
    model = ScoreModel(NCSNpp(**SMALL, num_classes=3), VPSDE())
    assert model.num_classes == 3


@pytest.mark.parametrize("option,value,allowed", [
    ("resblock_type", "resnet", "'ddpm', 'biggan'"),
    ("progressive", "input_skip", "'none', 'output_skip', 'residual'"),
    ("progressive_input", "output_skip", "'none', 'input_skip', 'residual'"),
    ("progressive_combine", "max", "'sum', 'cat'"),
    ("embedding_type", "sinusoidal", "'fourier', 'positional'"),
    ("nonlinearity", "gelu", "'swish', 'elu', 'relu', 'lrelu'"),
])
def test_bad_choices_name_the_option_and_the_allowed_values(option, value, allowed):
    with pytest.raises(ValueError, match=f"{option}='{value}' is not allowed; allowed: {allowed}"):
        NCSNpp(**{**SMALL, option: value})


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"image_size=18 is not allowed with 3 levels"):
        NCSNpp(**{**SMALL, "image_size": 18})
    with pytest.raises(ValueError, match=r"dropout=1.5"):
        NCSNpp(**{**SMALL, "dropout": 1.5})
    with pytest.raises(ValueError, match=r"num_classes=3 needs conditional=True"):
        NCSNpp(**SMALL, conditional=False, num_classes=3)
    net = NCSNpp(**SMALL)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2, 16, 16\)"):
        net(torch.randn(1, 3, 16, 16), torch.ones(1))


@pytest.mark.parametrize("name,expected", [("cifar10_ddpmpp", 61_804_419), ("cifar10_ncsnpp", 62_758_915)])
def test_shipped_cifar10_configs_build_the_papers_networks(name, expected):
    from pathlib import Path

    from scoresde.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "configs" / f"{name}.toml")
    with torch.device("meta"):
        net = build_model(cfg.model.name, in_channels=3, image_size=32, **cfg.model.params)
    assert score_sde_count(net) == expected
