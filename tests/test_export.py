"""`scoresde.save_pretrained` / `scoresde.load`: a trained model as safetensors + JSON, loaded without its data.

Truths: the checkpoint file itself (its EMA and raw tensors, read here with torch.load) and the
in-memory model that was trained — an export must reproduce both bit for bit; a run whose image
folder was moved away must sample exactly what it sampled before the move.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde
from scoresde.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from scoresde.config import ConfigError, load_config
from scoresde.evaluate import main as evaluate_main
from scoresde.run import DataSpec, build_score_model, build_sde
from scoresde.sample import main as sample_main
from scoresde.train import Trainer, train_loop

TOY = ["model.hidden=16", "model.depth=2", "model.embed_dim=8", "train.batch_size=32", "train.steps=6",
       "train.ckpt_every=6", "train.log_every=6", "train.tensorboard=false", "train.warmup=1",
       "train.lr=1e-2", "train.ema_decay=0.5"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 6-step toy run (EMA decay 1/2, so the EMA and raw weights differ) and its trainer."""
    root = tmp_path_factory.mktemp("toy")
    torch.set_num_threads(1)
    trainer = Trainer(load_config(None, TOY))
    train_loop(trainer, root / "run", progress=False)
    return root / "run", trainer


def fixed_inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((5, *shape), generator=g), torch.rand(5, generator=g) * 0.99 + 0.01


def assert_same_weights(model, want: dict):
    got = model.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_round_trip_is_bitwise_with_the_ema_weights_by_default(toy_run, tmp_path):
    run_dir, trainer = toy_run
    state = torch.load(latest_checkpoint(run_dir), map_location="cpu", weights_only=True)
    out = scoresde.save_pretrained(run_dir, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    for source in (out, out / "model.safetensors", run_dir, latest_checkpoint(run_dir)):
        model = scoresde.load(source)
        assert_same_weights(model, state["ema"]["module"])
        x, t = fixed_inputs((2,))
        with torch.no_grad():
            assert torch.equal(model.score_fn()(x, t), trainer.ema.module.score_fn()(x, t))
            assert torch.equal(model(x, t), trainer.ema.module(x, t))
        assert not model.training
    config = json.loads((out / "config.json").read_text())
    assert config["network"] == {"name": "mlp", "kwargs": {"num_classes": None, "dim": 2, "hidden": 16, "depth": 2,
                                                     "embed_dim": 8}}
    assert config["sde"] == {"name": "vp", "kwargs": {"beta_min": 0.1, "beta_max": 20.0}}
    assert config["score_model"] == {"parametrization": "eps", "sigma_data": 0.5, "noise_label": "edm"}
    assert config["data"] == {"event_shape": [2], "num_classes": None, "levels": None, "data_range": None}
    assert config["weights"] == "ema" and config["step"] == 6


def test_raw_weights_when_asked(toy_run, tmp_path):
    run_dir, trainer = toy_run
    state = torch.load(latest_checkpoint(run_dir), map_location="cpu", weights_only=True)
    raw = scoresde.load(run_dir, ema=False)
    assert_same_weights(raw, state["model"])
    assert any(not torch.equal(state["model"][k], v) for k, v in state["ema"]["module"].items())
    out = scoresde.save_pretrained(run_dir, tmp_path / "raw", ema=False)
    assert json.loads((out / "config.json").read_text())["weights"] == "raw"
    assert_same_weights(scoresde.load(out, ema=False), state["model"])
    x, t = fixed_inputs((2,))
    with torch.no_grad():
        assert torch.equal(scoresde.load(out, ema=False)(x, t), trainer.model(x, t))
    with pytest.raises(CheckpointError, match="holds the EMA weights only"):
        scoresde.load(scoresde.save_pretrained(run_dir, tmp_path / "ema"), ema=False)


def test_every_score_model_argument_and_the_sde_parameters_travel(tmp_path):
    """A bare model (x0 parametrization, sigma_data 0.7, a learned schedule whose parameters are
    weights) exported and loaded: same constructor arguments, same tensors, same outputs."""
    cfg = load_config(None, ["sde.name=learned", "sde.n_features=8", "model.parametrization=x0",
                             "model.sigma_data=0.7", "model.hidden=16", "model.embed_dim=8"])
    torch.manual_seed(0)
    model = build_score_model(cfg, DataSpec((3,)), build_sde(cfg))
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial, the zero-initialized last layer included
            p.add_(torch.randn_like(p) * 0.1)
    out = scoresde.save_pretrained(model, tmp_path / "bare")
    config = json.loads((out / "config.json").read_text())
    assert config["score_model"] == {"parametrization": "x0", "sigma_data": 0.7, "noise_label": "edm"}
    assert config["run_config"] is None and config["data"]["event_shape"] == [3]
    loaded = scoresde.load(out)
    assert any(k.startswith("sde.") for k in loaded.state_dict())
    assert_same_weights(loaded, model.state_dict())
    x, t = fixed_inputs((3,))
    with torch.no_grad():
        assert torch.equal(loaded.x0(x, t), model.x0(x, t))
        assert torch.equal(loaded.sde.sigma(t), model.sde.sigma(t))
    # exporting a loaded model again gives the same files' contents
    again = scoresde.save_pretrained(loaded, tmp_path / "again")
    assert json.loads((again / "config.json").read_text()) == config
    assert_same_weights(scoresde.load(again), model.state_dict())


def test_load_builds_no_data_set_trainer_or_optimizer(toy_run, tmp_path, monkeypatch):
    run_dir, trainer = toy_run
    out = scoresde.save_pretrained(run_dir, tmp_path / "exported")

    def forbidden(*args, **kwargs):
        raise AssertionError("load built a data set, a Trainer or an optimizer")

    monkeypatch.setattr("scoresde.run.load_dataset", forbidden)
    monkeypatch.setattr("scoresde.data.load_dataset", forbidden)
    monkeypatch.setattr("scoresde.train.Trainer.__init__", forbidden)
    monkeypatch.setattr("torch.optim.Optimizer.__init__", forbidden)
    for source in (out, run_dir, latest_checkpoint(run_dir)):
        model = scoresde.load(source)
        assert model.spec.data.event_shape == (2,)
    scoresde.save_pretrained(run_dir, tmp_path / "again")


def test_a_checkpoint_without_a_data_spec_still_loads(toy_run, tmp_path):
    """Checkpoints written before the data spec was recorded: the spec comes from the config's data."""
    run_dir, _ = toy_run
    state = load_checkpoint(run_dir)
    del state["data_spec"]
    save_checkpoint(state, tmp_path, 6)
    assert scoresde.load(tmp_path).spec.data == DataSpec((2,))


def write_image_folder(root):
    """8 grey 8x8 PNGs in two class folders (a: dark, b: bright)."""
    g = np.random.default_rng(0)
    for cls, lo in (("a", 0), ("b", 128)):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(g.integers(lo, lo + 128, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_a_moved_image_folder_does_not_block_sampling(tmp_path, capsys):
    images = tmp_path / "images"
    write_image_folder(images)
    cfg = load_config(None, ["data.name=image_folder", f"data.root={images}", "model.name=unet", "model.ch=8",
                             "model.ch_mult=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
                             "model.class_cond=true", "train.batch_size=4", "train.steps=2", "train.ckpt_every=2",
                             "train.log_every=2", "train.tensorboard=false"])
    train_loop(Trainer(cfg), tmp_path / "run", progress=False)
    args = ["--method", "ddim", "--steps", "3", "--n", "4", "--class", "1", "--no-progress"]
    sample_main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "before.png"), *args])
    before = np.load(tmp_path / "before.npz")["samples"]

    shutil.move(images, tmp_path / "elsewhere")
    model = scoresde.load(tmp_path / "run")
    assert model.spec.data == DataSpec((1, 8, 8), 2, 256, (-1.0, 1.0)) and model.num_classes == 2
    sample_main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "after.png"), *args])
    np.testing.assert_array_equal(np.load(tmp_path / "after.npz")["samples"], before)
    exported = scoresde.save_pretrained(tmp_path / "run", tmp_path / "exported")
    sample_main(["--checkpoint", str(exported), "--out", str(tmp_path / "exported.png"), *args])
    np.testing.assert_array_equal(np.load(tmp_path / "exported.npz")["samples"], before)
    # a checkpoint from before the data spec was recorded needs the folder, and says so
    state = load_checkpoint(tmp_path / "run")
    del state["data_spec"]
    save_checkpoint(state, tmp_path / "old", 2)
    with pytest.raises(ConfigError, match="data.root: .*does not exist .*predates the data spec"):
        scoresde.load(tmp_path / "old")
    # evaluation needs the held-out images, and says where it looked for them
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(exported), "--n", "2", "--no-progress"])
    assert "data.root" in capsys.readouterr().err


def test_the_clis_take_an_exported_directory(toy_run, tmp_path, capsys):
    run_dir, _ = toy_run
    exported = scoresde.save_pretrained(run_dir, tmp_path / "exported")
    args = ["--method", "dpmpp_2m", "--steps", "5", "--n", "16", "--no-progress"]
    sample_main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "run.png"), *args])
    sample_main(["--checkpoint", str(exported), "--out", str(tmp_path / "exp.png"), *args])
    assert (tmp_path / "exp.png").stat().st_size > 0
    np.testing.assert_array_equal(np.load(tmp_path / "exp.npz")["samples"], np.load(tmp_path / "run.npz")["samples"])
    opts = ["--n", "8", "--method", "rk4", "--steps", "4", "--no-progress"]
    by_run = evaluate_main(["--checkpoint", str(run_dir), *opts])
    by_export = evaluate_main(["--checkpoint", str(exported), *opts])
    assert torch.equal(by_run["values"], by_export["values"])


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def exported(toy_run, tmp_path):
    return scoresde.save_pretrained(toy_run[0], tmp_path / "exported")


def edit_config(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_truncated_or_corrupt_weights_are_named(exported):
    weights = exported / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        scoresde.load(exported)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        scoresde.load(exported)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"has config\.json but no model\.safetensors"):
        scoresde.load(exported)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.pop("sde"), r"config\.json: missing key 'sde'"),
    (lambda c: c["network"].update(name="unte"), r"config\.json: unknown model 'unte'; did you mean 'unet'\?"),
    (lambda c: c["network"]["kwargs"].update(hidden=32), r"model\.safetensors: the weights do not fit"),
    (lambda c: c["network"]["kwargs"].update(widht=3), r"config\.json: .*widht"),
    (lambda c: c["sde"].update(name="vpp"), r"config\.json: unknown SDE 'vpp'"),
    (lambda c: c["score_model"].update(parametrization="epsilon"), r"config\.json: unknown parametrization"),
    (lambda c: c["data"].update(event_shape=[0]), r"config\.json: data\.event_shape=\[0\] is not allowed"),
    (lambda c: c.update(format="other-1"), r"config\.json: format 'other-1'"),
])
def test_bad_config_entries_are_named(exported, change, match):
    edit_config(exported, change)
    with pytest.raises(CheckpointError, match=match):
        scoresde.load(exported)


def test_unreadable_config_and_empty_directories_are_named(exported, tmp_path):
    (exported / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not a readable JSON file"):
        scoresde.load(exported)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no export \(config\.json and model\.safetensors\) and no "
                                              "complete checkpoint"):
        scoresde.load(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        scoresde.load(tmp_path / "nowhere")


def test_an_export_into_a_run_directory_is_refused(toy_run):
    """It would hide the run's checkpoints from load: config.json marks a directory as an export."""
    with pytest.raises(ValueError, match="holds a run's checkpoints"):
        scoresde.save_pretrained(toy_run[0], toy_run[0])
    assert not (toy_run[0] / "config.json").exists()


def test_an_export_of_a_bare_model_samples_but_cannot_be_evaluated(tmp_path, capsys):
    """Without a run config there is no held-out data: sampling writes the samples (no figure to
    compare with), evaluation stops and says why."""
    cfg = load_config(None, ["model.hidden=16", "model.embed_dim=8"])
    out = scoresde.save_pretrained(build_score_model(cfg, DataSpec((3,)), build_sde(cfg)), tmp_path / "bare")
    sample_main(["--checkpoint", str(out), "--method", "ddim", "--steps", "2", "--n", "4", "--out",
                 str(tmp_path / "s.png"), "--no-progress"])
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 3) and not (tmp_path / "s.png").exists()
    assert "no figure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(out), "--no-progress"])
    assert "records no data set" in capsys.readouterr().err


def test_save_pretrained_needs_a_model_it_can_describe(tmp_path):
    cfg = load_config(None, [])
    model = build_score_model(cfg, DataSpec((2,)), build_sde(cfg))
    del model.spec
    with pytest.raises(ValueError, match="ScoreModel built by scoresde"):
        scoresde.save_pretrained(model, tmp_path / "x")


def test_a_compiled_model_exports_and_its_prefixed_weights_load(toy_run, tmp_path):
    """torch.compile wraps the model and prefixes its state dict's keys with `_orig_mod.`: the
    wrapper exports as the plain model, and weights saved under the prefix load into one."""
    run_dir, _ = toy_run
    model = scoresde.load(run_dir)
    compiled = torch.compile(model, backend="eager")
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    out = scoresde.save_pretrained(compiled, tmp_path / "from_compiled")
    x, t = fixed_inputs((2,))
    with torch.no_grad():
        assert torch.equal(scoresde.load(out)(x, t), model(x, t))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in compiled.state_dict().items()}, out / "model.safetensors")
    loaded = scoresde.load(out)
    assert_same_weights(loaded, model.state_dict())
