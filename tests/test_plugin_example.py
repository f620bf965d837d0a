"""The out-of-tree example plugin, experiments/plugins/scoresde_edm, used the way docs/plugins.md says.

The project is pip-installed (offline: --no-index --no-build-isolation, setuptools from this venv)
into a temporary --target, and fresh Python processes with that target on PYTHONPATH run the normal
command-line tools on `[sde] name = "edm"` and `--method edm_heun`. Nothing in scoresde names the
plugin, so these runs pass only if the entry points are found and the kernel-only SDE works in the
trainer, the samplers and the likelihood.

Truths checked: EDM's schedule sigma(t) = t, alpha = 1 has f = 0 and g^2 = 2t (derived by autograd
from the kernel alone); Heun's method on the exact score of a Gaussian mixture lands on the same
samples as a tight dopri5 solve of the same probability-flow ODE; and the CLIs run end to end.
(~25 s on 2 busy cores.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "experiments" / "plugins" / "scoresde_edm"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment whose PYTHONPATH holds the pip-installed plugin (and this checkout of scoresde)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("edm_plugin")
    src = tmp / "src"
    # build from a copy: pip builds in the source tree, and the docs test may build the same project
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), OMP_NUM_THREADS="1")
    return env, tmp


def run(args, env, cwd, timeout=300):
    out = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_installed_plugin_kernel_and_sampler(plugin_env):
    env, tmp = plugin_env
    code = r"""
import math, torch, scoresde
from scoresde.analytic import GaussianMixture
from scoresde.sampling import sample

assert "edm" in scoresde.list_sdes() and "edm_heun" in scoresde.list_samplers()
sde = scoresde.get_sde("edm", sigma_max=40.0)
assert type(sde).__module__ == "scoresde_edm.sde" and sde.T == 40.0 and sde.prior_std == 40.0
t = torch.tensor([0.01, 1.0, 39.0], dtype=torch.float64)
assert torch.allclose(sde.f(t), torch.zeros_like(t)) and torch.allclose(sde.g2(t), 2 * t)  # EDM: g^2 = 2t
assert torch.allclose(sde.t_of_log_snr(sde.log_snr(t)), t)

data = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.1, dim=2)
score = data.score_fn(sde)
x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
ref = sample(score, sde, method="ode", x_T=x_T, rtol=1e-9, atol=1e-9)
heun = sample(score, sde, method="edm_heun", steps=64, x_T=x_T)
err = (heun - ref).pow(2).mean().sqrt().item()
print("rms", err)
assert err < 1e-2, err
"""
    out = run(["-c", code], env, tmp)
    assert "rms" in out


def test_train_sample_evaluate_through_the_cli(plugin_env):
    env, tmp = plugin_env
    run_dir = tmp / "runs" / "edm"
    out = run(["-m", "scoresde.train", "--config", str(PLUGIN / "ring8_edm.toml"), "--run-dir", str(run_dir),
               "--no-progress", "train.steps=40", "train.log_every=20", "sample.n=200", "sample.steps=5"],
              env, tmp)
    assert "[ring8, mlp, edm] step 40" in out
    assert (run_dir / "samples.png").is_file()

    out = run(["-m", "scoresde.sample", "--checkpoint", str(run_dir), "--method", "edm_heun", "--steps", "5",
               "--n", "32", "--out", str(tmp / "heun.png"), "--no-progress"], env, tmp)
    assert "32 samples, edm_heun" in out and (tmp / "heun.npz").is_file()

    out = run(["-m", "scoresde.evaluate", "--checkpoint", str(run_dir), "--n", "16", "--rtol", "1e-3",
               "--atol", "1e-3", "--no-progress"], env, tmp)
    assert "nats/dim (NLL)" in out and "n=16" in out
