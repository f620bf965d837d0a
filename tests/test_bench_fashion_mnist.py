"""The Fashion-MNIST benchmark compares like with like: diffusers' UNet2DModel built by the benchmark
from experiments/configs/fashion_mnist.toml has exactly as many parameters as scoresde's U-Net of
that config (the issue allows 5%), and the same shape of output; the whole pipeline runs in --quick
mode where Debian's Fashion-MNIST files are installed (slow tier)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "experiments" / "bench" / "fashion_mnist.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_networks_have_the_same_parameter_count():
    pytest.importorskip("diffusers", reason="the diffusers side needs the diffusers extra")
    bench = bench_module()
    b = bench.scoresde_config()
    ours, theirs = bench.scoresde_unet(b), bench.diffusers_unet(b)
    count = [sum(p.numel() for p in m.parameters()) for m in (ours, theirs)]
    assert count[0] == count[1] == 1_112_801
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    assert theirs(x, t).sample.shape == ours(x, t.float() / 1000).shape == x.shape


@pytest.mark.slow
def test_quick_mode_runs_every_part(tmp_path):
    pytest.importorskip("diffusers", reason="the diffusers side needs the diffusers extra")
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    out = subprocess.run([sys.executable, str(BENCH), "all", "--quick", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    sides = {name.split("-")[0] for name in scores if "-" in name}
    assert sides == {"scoresde_x0", "scoresde_eps", "diffusers"}
    assert all(s["classifier_fd"] > 0 for name, s in scores.items() if "-" in name)
    assert "| diffusers | DPMSolverMultistepScheduler | default | 10 |" in out.stdout
