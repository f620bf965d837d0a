"""Configs: files and overrides resolve to the stated types, unknown keys are named with a
suggestion, bad values stop with one line naming the field, and saved configs load back equal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import scoresde

from scoresde.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.toml"))


def test_toy2d_file_is_the_embedded_default():
    # the README says `python -m scoresde.train` with no arguments runs experiments/configs/toy2d.toml
    assert config_to_dict(load_config(ROOT / "experiments/configs/toy2d.toml")) == config_to_dict(load_config())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate_and_roundtrip(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "c.toml")
    assert config_to_dict(load_config(tmp_path / "c.toml")) == config_to_dict(cfg)


def test_shipped_configs_cover_the_issue():
    assert {p.stem for p in CONFIGS} >= {"toy2d", "digits", "fashion_mnist", "cifar10_ddpmpp", "cifar10_ncsnpp"}
    assert load_config(ROOT / "experiments/configs/fashion_mnist.toml").data.root == "/usr/share/datasets/fashion-mnist"


def test_override_types():
    cfg = load_config(None, ["train.steps=2000", "train.lr=1", "train.tensorboard=false", "model.hidden=128",
                             "data.root=2024", "sde.beta_max=10", "data.name=moons"])
    assert cfg.train.steps == 2000 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.tensorboard is False
    assert cfg.model.params["hidden"] == 128 and cfg.model.params["depth"] == 3  # other defaults kept
    assert cfg.data.root == "2024" and cfg.data.name == "moons"
    assert cfg.sde.params == {"beta_min": 0.1, "beta_max": 10}


def test_changing_the_model_drops_the_previous_arguments():
    cfg = load_config(None, ["model.ch=16", "model.name=unet", "data.name=digits"])  # order does not matter
    assert cfg.model.name == "unet" and cfg.model.params == {"ch": 16}


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'; did you mean 'steps'"):
        load_config(None, ["train.stpes=10"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian'; did you mean 'train'"):
        load_config(None, ["trian.steps=10"])
    with pytest.raises(ConfigError, match=r"data.name='ring'.*did you mean 'ring8'"):
        load_config(None, ["data.name=ring"])
    with pytest.raises(ConfigError, match=r"sde.name='vpp'.*did you mean 'vp'"):
        load_config(None, ["sde.name=vpp"])
    with pytest.raises(ConfigError, match=r"model.name='mpl'.*did you mean 'mlp'"):
        load_config(None, ["model.name=mpl"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.depht'; did you mean 'depth'"):
        load_config(None, ["model.depht=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sde.sigma_max'.*arguments of sde 'vp'"):
        load_config(None, ["sde.sigma_max=2"])
    with pytest.raises(ConfigError, match="model.dim is set from the data set"):
        load_config(None, ["model.dim=3"])


def test_unknown_keys_in_files(tmp_path):
    (tmp_path / "c.toml").write_text('[train]\nbatch_sise = 3\n')
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text('[train\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "d.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("override, field", [
    ("train.lr=-1e-3", "train.lr=-0.001"), ("train.batch_size=0", "train.batch_size=0"),
    ("train.steps=1.5", "train.steps=1.5"), ("train.ema_decay=1", "train.ema_decay=1.0"),
    ("train.steps=lots", "train.steps='lots'"), ("train.weighting=sigma", "train.weighting='sigma'"),
    ("train.device=tpu", "train.device='tpu'"), ("model.parametrization=noise", "model.parametrization"),
    ("train.loss=dsmm", "train.loss='dsmm'"), ("sample.method=dpm", "sample.method='dpm'"), ("train.p_uncond=0.1", "train.p_uncond=0.1"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["train.steps"])


def test_saved_config_is_complete(tmp_path):
    cfg = load_config(None, ["model.hidden=64", "sde.name=ve", "sde.sigma_max=3.0", "model.parametrization=x0"])
    save_config(cfg, tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    assert "[model]" in text and "hidden = 64" in text and "sigma_max = 3.0" in text
    import tomllib
    back = config_from_dict(tomllib.loads(text))
    assert back == cfg and isinstance(back, Config)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    # what a user sees: one line naming the field, exit status 2 (as sample and evaluate), no traceback
    for args, field in ((["train.lr=-1"], "train.lr"),
                        (["data.name=mnist", f"data.root={tmp_path / 'missing'}"], "data.root"),
                        (["model.hiden=3", "train.steps=1"], "hiden")):
        r = subprocess.run([sys.executable, "-m", "scoresde.train", "--run-dir", str(tmp_path / "run"), *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], r.stderr


@pytest.mark.parametrize("override, match", [
    ("train.batch_size=1000000000000", r"train.batch_size=1000000000000 is not allowed: it must be in 1..10000000"),
    ("sample.n=1000000000000", r"sample.n=1000000000000 .* 1..10000000"),
    ("sample.steps=1000000000000", r"sample.steps=1000000000000 .* 1..10000000"),
    ("eval.bpd_n=1000000000000", r"eval.bpd_n=1000000000000 .* 0..10000000"),
    ("train.seed=100000000000000000000", r"train.seed=100000000000000000000 .* a seed must be in 0..2\*\*63-1"),
    ("train.seed=-1", r"train.seed=-1"), ("sample.seed=18446744073709551616", "sample.seed"),
    ("eval.heldout_seed=-5", "eval.heldout_seed"),
    ("train.loss=vdm", r"train.loss='vdm' needs an SDE with a learned schedule .*sde.name='vp'"),
    ('name="../../x"', r"name='../../x' is not allowed: .*plain name"),
    ('name="a/b"', "plain name"), ('name=".hidden"', "plain name"), ('name=""', "plain name"),
])
def test_values_that_would_fail_later_are_refused_up_front(override, match):
    """Each of these reached a traceback (allocation, seed overflow, the loss's own check at step 1,
    a run directory outside out_dir) before it was checked here."""
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["train.seed=9223372036854775807", "sample.n=10000000", "name=my-run_2.b",
                                      "train.loss=vdm sde.name=learned"])
def test_values_at_the_bounds_are_accepted(override):
    load_config(None, override.split())


# -- the loss registry and the [loss] table ------------------------------------------------------
def scaled_dsm(model, sde, x0, y=None, *, scale: float = 1.0, p_uncond: float = 0.0, generator=None, reduce=True):
    """dsm's loss times `scale`: a loss with a hyperparameter of its own, registered in-process."""
    from scoresde.losses import dsm_loss
    return scale * dsm_loss(model, sde, x0, y, p_uncond=p_uncond, generator=generator, reduce=reduce)


@pytest.fixture
def scaled_loss(monkeypatch):
    from scoresde.losses import LOSSES
    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))  # the registration ends with the test
    scoresde.register_loss("scaled")(scaled_dsm)
    return "scaled"


def test_a_registered_loss_gets_its_hyperparameters_from_the_loss_table(scaled_loss, tmp_path):
    from scoresde.config import loss_kwargs
    assert "scaled" in scoresde.list_losses()
    path = tmp_path / "c.toml"
    path.write_text('[train]\nloss = "scaled"\np_uncond = 0.1\n[model]\nclass_cond = true\n[loss]\nscale = 3\n')
    cfg = load_config(path)
    kwargs = loss_kwargs(cfg, levels=256, data_range=(-1.0, 1.0))  # scaled takes no levels
    assert kwargs == {"p_uncond": 0.1, "scale": 3.0} and type(kwargs["scale"]) is float
    assert load_config(path, ["loss.scale=0.5"]).loss.params == {"scale": 0.5}
    assert load_config(path, ["train.loss=dsm", "train.p_uncond=0"]).loss.params == {}  # another loss: its own defaults
    save_config(cfg, tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml").loss.params == {"scale": 3.0}


def test_existing_configs_keep_their_loss_options():
    from scoresde.config import loss_kwargs
    cfg = load_config(None, ["train.weighting=likelihood", "train.eps=1e-4"])
    assert loss_kwargs(cfg) == {"weighting": "likelihood", "t_sampling": None, "eps": 1e-4, "p_uncond": 0.0}
    assert config_from_dict(config_to_dict(cfg)).loss.params == {}
    assert loss_kwargs(load_config(None, ["train.loss=ddpm"])) == {"p_uncond": 0.0}


@pytest.mark.parametrize("overrides, match", [
    (["train.loss=dsn"], r"train.loss='dsn' is unknown; did you mean 'dsm'\? \(known: ddpm, dsm, .*scaled"),
    (["loss.scal=2"], r"unknown config key 'loss.scal'; did you mean 'scale'\? \(arguments of loss 'scaled': scale\)"),
    (["loss.scale=big"], r"loss.scale='big' is not allowed: it must be of type float"),
    (["loss.weighting=likelihood"], r"loss.weighting is the field train.weighting; remove it"),
    (["loss.reduce=false"], r"loss.reduce is an argument of every loss call"),
    (["train.weighting=likelihood"], r"train.weighting='likelihood' does not apply to train.loss='scaled' "
                                     r"\(its arguments: scale, p_uncond\)"),
])
def test_bad_loss_settings_name_the_key_and_the_allowed_ones(scaled_loss, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["train.loss=scaled", *overrides])


def test_dsm_refuses_loss_parameters_it_does_not_have():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.p_mean' \(arguments of loss 'dsm': none\)"):
        load_config(None, ["loss.p_mean=-1.2"])
