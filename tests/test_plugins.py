"""Out-of-tree SDE plugins through the `scoresde.sdes` entry-point group (issue 2).

A plugin is a separate distribution; scoresde never imports it by name. The truths checked: the
registry finds it (in this process and in a fresh one), imports it only when asked for, keeps
built-ins first, reports a broken plugin by name, and the plugin's kernel-only SDE gets a correct
drift/diffusion and probability flow from alpha and sigma alone.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchdiffeq

import scoresde
from scoresde.sdes import SDES, VPSDE

PLUGIN_SOURCE = '''
"""alpha(t) = exp(-t), sigma(t) = sqrt(1 - exp(-2t)) * c: an Ornstein-Uhlenbeck kernel, nothing else."""
import torch
from scoresde import KernelSDE, register_sde


@register_sde("ou-plugin")  # self-registration on import must agree with the entry point
class OUPlugin(KernelSDE):
    def __init__(self, c: float = 1.0, T: float = 3.0, N: int = 100):
        super().__init__(N=N, T=T)
        self.c = c

    def alpha(self, t):
        return torch.exp(-t)

    def sigma(self, t):
        return self.c * torch.sqrt(-torch.expm1(-2 * t))
'''


def write_distribution(root, name, module, source, entry_points):
    """An installed distribution as pip leaves it: the module plus `<name>-<version>.dist-info`."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[scoresde.sdes]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    (info / "RECORD").write_text("")


@pytest.fixture
def fresh_registry(monkeypatch):
    """The SDE registry as if no entry point had been read yet; restored after the test."""
    monkeypatch.setattr(SDES, "_items", dict((k, v) for k, v in SDES._items.items() if isinstance(v, type)))
    monkeypatch.setattr(SDES, "_entry_points_loaded", False)
    return monkeypatch


def test_entry_point_plugin_is_found_lazily_and_works(tmp_path, fresh_registry):
    write_distribution(tmp_path, "scoresde-ou-plugin", "ou_plugin_mod", PLUGIN_SOURCE,
                       {"ou-plugin": "ou_plugin_mod:OUPlugin", "vp": "ou_plugin_mod:OUPlugin"})
    fresh_registry.syspath_prepend(str(tmp_path))
    fresh_registry.delitem(sys.modules, "ou_plugin_mod", raising=False)

    assert "ou-plugin" in scoresde.list_sdes()
    assert "ou_plugin_mod" not in sys.modules  # listed without being imported
    sde = scoresde.get_sde("ou-plugin", c=2.0)
    assert type(sde).__name__ == "OUPlugin" and type(sde).__module__ == "ou_plugin_mod" and sde.c == 2.0
    assert scoresde.get_sde("ou-plugin") is not sde  # the class is cached, instances are fresh
    assert SDES.get("vp") is VPSDE  # a plugin cannot shadow a built-in

    # truth: dx = -x dt + c sqrt(2) dw has alpha = e^-t, sigma^2 = c^2 (1 - e^-2t)
    t = torch.tensor([0.1, 1.0, 2.5], dtype=torch.float64)
    x = torch.ones(3, 2, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(drift, -x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, torch.full_like(t, 2 * math.sqrt(2)), rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=0)
    assert sde.prior_std == pytest.approx(2 * math.sqrt(1 - math.exp(-6)), rel=1e-12)

    # its probability flow for data N(0.5, 0.2^2) maps x_T exactly to the data (u = (x - alpha m)/sqrt(v) is conserved)
    m, s, eps = 0.5, 0.2, 1e-3

    def var(tt):
        return sde.alpha(tt) ** 2 * s ** 2 + sde.sigma(tt) ** 2

    def score(xx, tt):
        return (sde.alpha(tt)[:, None] * m - xx) / var(tt)[:, None]

    flow = sde.reverse(score, probability_flow=True)
    T = torch.tensor([sde.T], dtype=torch.float64)
    x_T = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    out = torchdiffeq.odeint(flow, x_T, torch.tensor([sde.T, eps], dtype=torch.float64), rtol=1e-9, atol=1e-10)[-1]
    e = torch.tensor([eps], dtype=torch.float64)
    expected = sde.alpha(e) * m + torch.sqrt(var(e) / var(T)) * (x_T - sde.alpha(T) * m)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_broken_plugin_fails_only_when_used_and_names_itself(tmp_path, fresh_registry):
    write_distribution(tmp_path, "scoresde-broken", "broken_sde_mod", "raise RuntimeError('boom')\n",
                       {"broken-sde": "broken_sde_mod:Nope"})
    fresh_registry.syspath_prepend(str(tmp_path))
    assert "broken-sde" in scoresde.list_sdes()  # listing does not import it
    assert isinstance(scoresde.get_sde("ve"), scoresde.VESDE)  # other names are unaffected
    with pytest.raises(ImportError, match=r"SDE plugin 'broken-sde' = 'broken_sde_mod:Nope' .*"
                                          r"scoresde\.sdes.*scoresde-broken.*RuntimeError: boom"):
        scoresde.get_sde("broken-sde")


def test_unknown_name_lists_plugins_and_suggests(tmp_path, fresh_registry):
    write_distribution(tmp_path, "scoresde-ou-plugin", "ou_plugin_mod2", PLUGIN_SOURCE.replace('"ou-plugin"', '"ou-plugin-2"'),
                       {"ou-plugin-2": "ou_plugin_mod2:OUPlugin"})
    fresh_registry.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown SDE 'ou-plugn-2'; did you mean 'ou-plugin-2'\?"):
        scoresde.get_sde("ou-plugn-2")


def test_register_sde_refuses_silent_replacement(fresh_registry):
    @scoresde.register_sde("plugin-test-vp2")
    class VP2(VPSDE):
        pass

    assert scoresde.get_sde("plugin-test-vp2", beta_max=10.0).beta_max == 10.0
    with pytest.raises(ValueError, match=r"SDE 'plugin-test-vp2' is already registered .*overwrite=True"):
        scoresde.register_sde("plugin-test-vp2")(VPSDE)
    scoresde.register_sde("plugin-test-vp2", overwrite=True)(VPSDE)
    assert SDES.get("plugin-test-vp2") is VPSDE
    with pytest.raises(ValueError, match="non-empty string"):
        scoresde.register_sde("")


def test_pip_installed_plugin_in_a_fresh_process(tmp_path):
    """The real route: pip installs a plugin project (pyproject + setuptools, no network), and a new
    Python process finds it through importlib.metadata with nothing but the package on its path.
    (~2 s on 2 busy cores.)"""
    pytest.importorskip("setuptools")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "ou_pip_plugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE.replace('"ou-plugin"', '"ou-pip"')))
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "scoresde-ou-pip-plugin"
        version = "0.1"

        [project.entry-points."scoresde.sdes"]
        ou-pip = "ou_pip_plugin:OUPlugin"

        [tool.setuptools]
        package-dir = {"" = "src"}
        py-modules = ["ou_pip_plugin"]
    """))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(project)], check=True, timeout=120)
    code = ("import scoresde, torch; assert 'ou-pip' in scoresde.list_sdes(); "
            "s = scoresde.get_sde('ou-pip', c=0.5); "
            "print(type(s).__module__, float(s.sde(torch.ones(1, 1), torch.tensor([1.0]))[1]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.getcwd()]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    module, g = out.stdout.split()
    assert module == "ou_pip_plugin" and float(g) == pytest.approx(0.5 * math.sqrt(2), rel=1e-6)  # g = c sqrt(2)
