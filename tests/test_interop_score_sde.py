"""score_sde checkpoints: a state dict written here in score_sde's layout (DataParallel's `module.`
prefix, a flat `all_modules.<i>` list, EMA shadow_params in parameter order) lands on the right
tensors; its config files are read without running them; its conventions hold in closed form
(VP: label 999 t, score = -output / std; VE: label log sigma(t), score = output / sigma); bad input
is named. (Agreement with score_sde_pytorch's own code is measured outside the repository, since
its code is not a dependency.)"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

from scoresde.interop import load_score_sde
from scoresde.interop.score_sde import build_from_config, read_config
from scoresde.models import ScoreModel
from scoresde.sdes import VESDE, VPSDE, SubVPSDE


def tiny_config(sde="vpsde", **model):
    base = dict(name="ncsnpp", scale_by_sigma=sde == "vesde", ema_rate=0.999, normalization="GroupNorm",
                nonlinearity="swish", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
                resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
                attention_type="ddpm", init_scale=0.0, embedding_type="fourier" if sde == "vesde" else "positional",
                fourier_scale=16, conv_size=3, dropout=0.1, sigma_min=0.01, sigma_max=50, num_scales=1000,
                beta_min=0.1, beta_max=20.0)
    return {"training": {"sde": sde, "continuous": True},
            "data": {"image_size": 8, "num_channels": 1, "centered": sde != "vesde"},
            "model": {**base, **model}, "optim": {"lr": 2e-4}, "seed": 42}


def tiny_layout() -> list[tuple[str, tuple]]:
    """score_sde's NCSNpp(tiny_config()) state dict, in order: 8x8 -> 4x4, nf=8, BigGAN blocks.

    Written out from its architecture: embedding MLP, stem, per level res blocks (+ attention at 4x4)
    and a BigGAN down block, middle (block, attention, block), up levels of num_res_blocks + 1 blocks
    on [h, skip] (+ attention, + BigGAN up block), output GroupNorm and conv. Its blocks name their
    layers GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2 (1x1 shortcut); attention
    GroupNorm_0 and NIN_0..3 (q, k, v, out) with W of shape (in, out).
    """
    def block(i, cin, cout, shortcut):
        keys = [(f"{i}.GroupNorm_0.weight", (cin,)), (f"{i}.GroupNorm_0.bias", (cin,)),
                (f"{i}.Conv_0.weight", (cout, cin, 3, 3)), (f"{i}.Conv_0.bias", (cout,)),
                (f"{i}.Dense_0.weight", (cout, 32)), (f"{i}.Dense_0.bias", (cout,)),
                (f"{i}.GroupNorm_1.weight", (cout,)), (f"{i}.GroupNorm_1.bias", (cout,)),
                (f"{i}.Conv_1.weight", (cout, cout, 3, 3)), (f"{i}.Conv_1.bias", (cout,))]
        return keys + ([(f"{i}.Conv_2.weight", (cout, cin, 1, 1)), (f"{i}.Conv_2.bias", (cout,))] if shortcut else [])

    def attn(i, c):
        keys = [(f"{i}.GroupNorm_0.weight", (c,)), (f"{i}.GroupNorm_0.bias", (c,))]
        for j in range(4):
            keys += [(f"{i}.NIN_{j}.W", (c, c)), (f"{i}.NIN_{j}.b", (c,))]
        return keys

    keys = [("0.weight", (32, 8)), ("0.bias", (32,)), ("1.weight", (32, 32)), ("1.bias", (32,)),
            ("2.weight", (8, 1, 3, 3)), ("2.bias", (8,))]
    keys += block(3, 8, 8, False) + block(4, 8, 8, True)                    # level 8x8, down block
    keys += block(5, 8, 16, True) + attn(6, 16)                              # level 4x4
    keys += block(7, 16, 16, False) + attn(8, 16) + block(9, 16, 16, False)  # middle
    keys += block(10, 32, 16, True) + block(11, 24, 16, True) + attn(12, 16) + block(13, 16, 16, True)
    keys += block(14, 24, 8, True) + block(15, 16, 8, True)
    keys += [("16.weight", (8,)), ("16.bias", (8,)), ("17.weight", (1, 8, 3, 3)), ("17.bias", (1,))]
    return [(f"all_modules.{k}", shape) for k, shape in keys]


def write_checkpoint(seed=0):
    """(state, model tensors, shadow tensors) in score_sde's layout, shadow != model for every tensor."""
    gen = torch.Generator().manual_seed(seed)
    layout = tiny_layout()
    model = {"module.sigmas": torch.exp(torch.linspace(math.log(50), math.log(0.01), 1000))}
    model.update({f"module.{k}": torch.randn(shape, generator=gen) for k, shape in layout})
    shadow = [torch.randn(shape, generator=gen) for _, shape in layout]   # parameter order
    state = {"model": model, "ema": {"decay": 0.999, "num_updates": 5, "shadow_params": shadow},
             "optimizer": {"state": {}, "param_groups": []}, "step": 5}
    return state, model, dict(zip([k for k, _ in layout], shadow))


def test_state_dict_in_score_sde_layout_lands_on_the_right_tensors(tmp_path):
    state, raw, shadow = write_checkpoint()
    torch.save(state, tmp_path / "checkpoint_5.pth")
    for ema, source in ((True, shadow), (False, {k[len("module."):]: v for k, v in raw.items()})):
        model, sde = load_score_sde(tmp_path / "checkpoint_5.pth", tiny_config(), ema=ema)
        net = model.net
        assert isinstance(sde, VPSDE) and not model.training
        torch.testing.assert_close(net.dense0.weight, source["all_modules.0.weight"], rtol=0, atol=0)
        torch.testing.assert_close(net.stem.bias, source["all_modules.2.bias"], rtol=0, atol=0)
        torch.testing.assert_close(net.down[0].downsample.shortcut.weight, source["all_modules.4.Conv_2.weight"],
                                   rtol=0, atol=0)
        # NIN W (in, out) acts as x @ W: the 1x1 convolution's (out, in) weight is its transpose
        torch.testing.assert_close(net.down[1].attns[0].k.weight[:, :, 0, 0], source["all_modules.6.NIN_1.W"].t(),
                                   rtol=0, atol=0)
        torch.testing.assert_close(net.mid[1].proj.bias, source["all_modules.8.NIN_3.b"], rtol=0, atol=0)
        torch.testing.assert_close(net.up[0].blocks[1].dense.weight, source["all_modules.11.Dense_0.weight"],
                                   rtol=0, atol=0)
        torch.testing.assert_close(net.up[1].blocks[1].norm1.weight, source["all_modules.15.GroupNorm_1.weight"],
                                   rtol=0, atol=0)
        torch.testing.assert_close(net.conv_out.weight, source["all_modules.17.weight"], rtol=0, atol=0)
        loaded = sum(p.numel() for p in net.parameters())
        assert loaded == sum(v.numel() for v in source.values() if v.dim() and v.shape != (1000,))


def test_ve_fourier_weights_are_not_in_the_ema():
    # score_sde's Fourier frequencies W are a frozen parameter: in the state dict, not in shadow_params
    cfg = tiny_config("vesde")
    gen = torch.Generator().manual_seed(1)
    layout = [("all_modules.0.W", (8,))] + [(k.replace(f"all_modules.{i}.", f"all_modules.{i + 1}."), s)
                                             for k, s in tiny_layout()
                                             for i in [int(k.split(".")[1])]]
    layout = [(k, (32, 16) if k == "all_modules.1.weight" else s) for k, s in layout]   # 2 nf Fourier features
    model = {f"module.{k}": torch.randn(s, generator=gen) for k, s in layout}
    model["module.sigmas"] = torch.ones(1000)
    shadow = [torch.randn(s, generator=gen) for k, s in layout if k != "all_modules.0.W"]
    m, sde = load_score_sde({"model": model, "ema": {"shadow_params": shadow}, "step": 0}, cfg)
    assert isinstance(sde, VESDE) and m.parametrization == "score" and m.noise_label == "log_sigma"
    torch.testing.assert_close(m.net.fourier.W, model["module.all_modules.0.W"], rtol=0, atol=0)
    torch.testing.assert_close(m.net.dense0.weight, shadow[0], rtol=0, atol=0)
    assert not m.net.centered


class Probe(nn.Module):
    """A network with a known output F = 2 that records what it was given."""

    def forward(self, x, c_noise, y=None):
        self.seen = (x, c_noise)
        return torch.full_like(x, 2.0)


def test_score_sde_conventions_in_closed_form():
    x, t = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0.001, 0.3, 1.0], dtype=torch.float64)
    b0, b1 = 0.1, 20.0
    log_alpha = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
    for sde, std in ((VPSDE(b0, b1), torch.sqrt(1 - torch.exp(2 * log_alpha))),
                     (SubVPSDE(b0, b1), 1 - torch.exp(2 * log_alpha))):
        probe = Probe()
        score = ScoreModel(probe, sde, "eps", noise_label="999t").score(x, t)
        torch.testing.assert_close(score, -2 / std[:, None, None, None].expand_as(x))
        assert probe.seen[0] is x   # the raw input, no c_in scaling
        torch.testing.assert_close(probe.seen[1], 999 * t)
    probe = Probe()
    sigma = 0.01 * (50 / 0.01) ** t
    score = ScoreModel(probe, VESDE(0.01, 50), "score", noise_label="log_sigma").score(x, t)
    torch.testing.assert_close(score, 2 / sigma[:, None, None, None].expand_as(x))   # scale_by_sigma
    torch.testing.assert_close(probe.seen[1], torch.log(sigma))
    with pytest.raises(ValueError, match="noise_label='t' is not allowed; allowed: edm, 999t, log_sigma"):
        ScoreModel(Probe(), VPSDE(), noise_label="t")


def test_config_file_is_read_without_running_it(tmp_path):
    (tmp_path / "configs" / "vp").mkdir(parents=True)
    (tmp_path / "configs" / "default_tiny_configs.py").write_text(textwrap.dedent('''\
        import ml_collections
        import torch


        def get_default_configs():
          config = ml_collections.ConfigDict()
          config.training = training = ml_collections.ConfigDict()
          config.training.batch_size = 128
          training.continuous = True
          config.data = data = ml_collections.ConfigDict()
          data.image_size = 8
          data.num_channels = 1
          data.centered = False
          config.model = model = ml_collections.ConfigDict()
          model.sigma_min = 0.01
          model.sigma_max = 50
          model.num_scales = 1000
          model.beta_min = 0.1
          model.beta_max = 20.
          model.dropout = 0.1
          model.embedding_type = 'fourier'
          config.seed = 42
          config.device = torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu')
          return config
        '''))
    model_lines = "\n".join(f"  model.{k} = {v!r}" for k, v in tiny_config()["model"].items()
                            if k not in ("sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max", "dropout"))
    (tmp_path / "configs" / "vp" / "tiny.py").write_text(
        '"""A tiny VP config."""\nfrom configs.default_tiny_configs import get_default_configs\n\n\n'
        "def get_config():\n  config = get_default_configs()\n  training = config.training\n"
        "  training.sde = 'vpsde'\n  data = config.data\n  data.centered = True\n  model = config.model\n"
        f"{model_lines}\n  return config\n")
    cfg = read_config(tmp_path / "configs" / "vp" / "tiny.py")
    assert cfg["training"] == {"batch_size": 128, "continuous": True, "sde": "vpsde"}
    assert cfg["data"] == {"image_size": 8, "num_channels": 1, "centered": True}
    assert cfg["model"]["ch_mult"] == (1, 2) and cfg["model"]["beta_max"] == 20.0 and cfg["seed"] == 42
    assert "device" not in cfg
    state, _, shadow = write_checkpoint()
    model, _ = load_score_sde(state, tmp_path / "configs" / "vp" / "tiny.py")
    torch.testing.assert_close(model.net.stem.weight, shadow["all_modules.2.weight"], rtol=0, atol=0)

    bad = tmp_path / "configs" / "vp" / "bad.py"
    bad.write_text(bad_text := (tmp_path / "configs" / "vp" / "tiny.py").read_text().replace(
        "  data.centered = True", "  data.centered = __import__('os').system('touch pwned') == 0"))
    assert "__import__" in bad_text
    with pytest.raises(ValueError, match=r"bad.py:10: cannot read `data.centered = __import__\('os'\)"):
        read_config(bad)
    assert not (tmp_path / "pwned").exists()
    loop = tmp_path / "configs" / "vp" / "loop.py"
    loop.write_text("def get_config():\n  config = {}\n  for i in range(3):\n    pass\n  return config\n")
    with pytest.raises(ValueError, match=r"loop.py:3: cannot read `for i in range\(3\):`"):
        read_config(loop)


@pytest.mark.parametrize("change,message", [
    (("model", "normalization", "InstanceNorm++"), "model.normalization='InstanceNorm++' is not supported"),
    (("model", "name", "ncsnv2"), "model.name='ncsnv2' is not supported"),
    (("training", "sde", "edm"), "training.sde='edm' is not supported; supported: vpsde, subvpsde, vesde"),
    (("training", "continuous", False), "training.continuous=False is not supported"),
    (("model", "fancy_option", 3), "model.fancy_option is not a score_sde NCSN++ option"),
    (("model", "progressive", "skip"), "model.progressive='skip' is not allowed; allowed: 'none', 'output_skip'"),
    (("model", "scale_by_sigma", True), "model.scale_by_sigma=True is not supported with training.sde='vpsde'"),
])
def test_unsupported_config_options_are_named(change, message):
    cfg = tiny_config()
    section, key, value = change
    cfg[section][key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        build_from_config(cfg)


def test_checkpoints_not_fitting_the_config_name_the_keys():
    state, model, _ = write_checkpoint()
    state["model"]["module.all_modules.5.Conv_0.weight"] = torch.zeros(16, 8, 1, 1)
    del state["model"]["module.all_modules.17.bias"]
    state["model"]["module.all_modules.18.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys: all_modules.17.bias; unexpected keys: all_modules.18.weight; "
                                         r"shape mismatches: all_modules.5.Conv_0.weight \(16, 8, 1, 1\) "
                                         r"\(config: \(16, 8, 3, 3\)\)"):
        load_score_sde(state, tiny_config())
    state, _, _ = write_checkpoint()
    state["ema"]["shadow_params"] = state["ema"]["shadow_params"][:-1]
    with pytest.raises(ValueError, match="ema.shadow_params has 153 tensors; the config's network has 154 trainable"):
        load_score_sde(state, tiny_config())
    state, _, _ = write_checkpoint()
    state["ema"]["shadow_params"][0] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"ema.shadow_params\[0\] has shape \(3,\), but parameter 0 "
                                         r"\(all_modules.0.weight\) has shape \(32, 8\)"):
        load_score_sde(state, tiny_config())
    with pytest.raises(ValueError, match="not a score_sde checkpoint"):
        load_score_sde({"state_dict": {}}, tiny_config())


def test_loaded_model_exports_and_loads_back_bitwise(tmp_path):
    # a score_sde model carries what builds it again: save_pretrained + load give the same scores
    import scoresde

    state, _, _ = write_checkpoint()
    model, sde = load_score_sde(state, tiny_config(), ema=True)
    scoresde.save_pretrained(model, tmp_path / "export")
    back = scoresde.load(tmp_path / "export")
    assert isinstance(back.sde, VPSDE) and back.noise_label == "999t"
    assert back.spec.data.event_shape == (1, 8, 8) and back.spec.data.data_range == (-1.0, 1.0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(back.score_fn()(x, t), model.score_fn()(x, t), rtol=0, atol=0)
