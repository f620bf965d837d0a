"""`python -m scoresde.evaluate` end to end on a checkpoint whose model is known in closed form.

At step 0 the networks' last layer is zero, so eps_hat = 0 and the score is 0: the probability flow
is dx/dt = f(t) x, x_T = (alpha_T / alpha_eps) x, and
    log p(x) = log N(x_T; 0, I) + D log(alpha_T / alpha_eps).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.checkpoint import save_checkpoint
from scoresde.config import load_config
from scoresde.evaluate import main
from scoresde.train import Trainer


@pytest.mark.parametrize("solver", [[], ["--method", "rk4", "--steps", "8"]])
def test_toy_nll_matches_closed_form(tmp_path, capsys, solver):
    cfg = load_config(None, ["train.steps=1"])
    trainer = Trainer(cfg)
    save_checkpoint(trainer.state_dict(), tmp_path, 0)
    out = main(["--checkpoint", str(tmp_path), "--n", "64", "--batch-size", "32", "--no-progress", *solver])
    x = trainer.dataset.heldout(64, cfg.eval.heldout_seed).double()
    sde, t = trainer.sde, torch.tensor([1e-5, 1.0], dtype=torch.float64)
    ratio = sde.alpha(t[1:]) / sde.alpha(t[:1])
    x_T = ratio * x
    log_p = -0.5 * (x_T ** 2).sum(1) - math.log(2 * math.pi) + 2 * torch.log(ratio)
    assert torch.allclose(out["values"], -log_p / 2, atol=1e-3)
    assert out["n"] == 64 and out["nfe_per_solve"] > 0 and out["ci95"] > 0
    assert "nats/dim" in capsys.readouterr().out
    if solver:  # 8 steps of 4 stages
        assert out["nfe_per_solve"] == 8 * 4


def test_fixed_grid_method_without_steps_is_reported(tmp_path, capsys):
    trainer = Trainer(load_config(None, ["train.steps=1"]))
    save_checkpoint(trainer.state_dict(), tmp_path, 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path), "--method", "rk4", "--no-progress"])
    assert exit_info.value.code == 2
    assert "method='rk4' is a fixed-grid solver and needs steps" in capsys.readouterr().err


def test_missing_checkpoint_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path), "--no-progress"])
    assert "no complete checkpoint" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_config_are_named(tmp_path, capsys):
    """A checkpoint whose weights another network produced (here: the config says 32 hidden units,
    the weights have 16) fails with the tensor names and both shapes, not a load_state_dict traceback."""
    trainer = Trainer(load_config(None, ["train.steps=1", "model.hidden=16"]))
    state = trainer.state_dict()
    state["config"]["model"]["hidden"] = 32
    save_checkpoint(state, tmp_path, 0)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert "do not fit" in err and "checkpoint (16" in err and "model (32" in err
    assert "Traceback" not in err
