"""`python -m scoresde.sample` end to end on a real (tiny) class-conditional checkpoint.

Truth used: classifier-free guidance is s_w = s_uncond + w (s_cond - s_uncond) (Ho & Salimans 2022),
so w = 1 must reproduce the conditional run and w = 0 the unconditional one, from the same seed;
any w must equal sampling with that combination built by hand from the checkpoint's network.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from scoresde.config import load_config
from scoresde.run import load_run
from scoresde.sample import main
from scoresde.sampling import sample
from scoresde.train import Trainer, train_loop

TINY_UNET = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1]",
             "model.num_res_blocks=1", "model.attn_resolutions=[]", "model.dropout=0.0",
             "train.batch_size=16", "train.steps=20", "train.ckpt_every=20", "train.warmup=1",
             "train.lr=3e-3", "train.ema_decay=0.5", "train.log_every=20", "train.tensorboard=false"]
N, STEPS = 8, 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional run (trained with label dropout) and an unconditional one, 20 steps
    each (EMA decay 0.5, so the sampled EMA weights are the trained ones, not the initialization)."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()  # conftest's one-thread fixture is per test, and runs after this one
    torch.set_num_threads(1)
    try:
        for name, extra in [("cond", ["model.class_cond=true", "train.p_uncond=0.2"]), ("uncond", [])]:
            train_loop(Trainer(load_config(None, TINY_UNET + extra)), root / name, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def close(a, b):
    """Equal up to float32 rounding of the different orders of the same additions."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def run_cli(run_dir, out, *extra):
    main(["--checkpoint", str(run_dir), "--method", "ddim", "--steps", str(STEPS), "--n", str(N),
          "--seed", "5", "--out", str(out), "--no-progress", *extra])
    return np.load(out.with_suffix(".npz"))


def test_classifier_free_guidance_end_to_end(runs, tmp_path):
    cond = run_cli(runs / "cond", tmp_path / "c3.png", "--class", "3")
    assert (tmp_path / "c3.png").stat().st_size > 0
    assert cond["samples"].shape == (N, 1, 8, 8) and np.isfinite(cond["samples"]).all()
    assert (cond["labels"] == 3).all()
    w1 = run_cli(runs / "cond", tmp_path / "w1.png", "--class", "3", "--guidance-scale", "1")
    w0 = run_cli(runs / "cond", tmp_path / "w0.png", "--class", "3", "--guidance-scale", "0")
    uncond = run_cli(runs / "cond", tmp_path / "u.png")
    close(w1["samples"], cond["samples"])
    close(w0["samples"], uncond["samples"])
    # the label reaches the network: another class gives other samples from the same noise
    other = run_cli(runs / "cond", tmp_path / "c7.png", "--class", "7")
    assert not np.allclose(other["samples"], cond["samples"], rtol=1e-2, atol=1e-2)

    w = 2.5
    guided = run_cli(runs / "cond", tmp_path / "w.png", "--class", "3", "--guidance-scale", str(w))
    model = load_run(runs / "cond").model
    s_cond, s_uncond = model.score_fn(torch.full((N,), 3, dtype=torch.long)), model.score_fn(None)

    def by_hand(x, t):
        su = s_uncond(x, t)
        return su + w * (s_cond(x, t) - su)

    want = sample(by_hand, model.sde, (N, 1, 8, 8), method="ddim", steps=STEPS,
                  generator=torch.Generator().manual_seed(5))
    close(guided["samples"], want.float().numpy())
    assert not np.allclose(guided["samples"], cond["samples"], rtol=1e-2, atol=1e-2)


def test_calibrate_fits_a_grid_that_times_reuses(runs, tmp_path, capsys):
    """--calibrate: the fitted grid runs from T to eps and is saved; sampling on it through --times
    (no fit) gives the same samples; its printed error is at most the best built-in grid's."""
    fitted = run_cli(runs / "cond", tmp_path / "cal.png", "--class", "3", "--calibrate", "16",
                     "--calibrate-iterations", "30")
    printed = capsys.readouterr().out
    m = re.search(r"RMS ([0-9.e+-]+) against the reference flow, (\w+) grid ([0-9.e+-]+)", printed)
    assert m and float(m.group(1)) <= float(m.group(3)), printed
    times = fitted["times"]
    assert times.shape == (STEPS + 1,) and times[0] == 1.0 and times[-1] == 1e-3 and (np.diff(times) < 0).all()
    reused = run_cli(runs / "cond", tmp_path / "re.png", "--class", "3", "--times", str(tmp_path / "cal.npz"))
    close(reused["samples"], fitted["samples"])
    np.testing.assert_array_equal(reused["times"], times)
    # a stratified batch of 8 of 32 draws, with classifier-free guidance (scores of any batch size)
    batched = run_cli(runs / "cond", tmp_path / "b.png", "--class", "3", "--guidance-scale", "2", "--calibrate",
                      "32", "--calibrate-batch", "8", "--calibrate-iterations", "20")
    assert batched["times"].shape == (STEPS + 1,) and (np.diff(batched["times"]) < 0).all()


@pytest.mark.parametrize("run,args,match", [
    ("cond", ["--class", "10"], r"--class 10 is not allowed: classes are 0\.\.9"),
    ("cond", ["--class", "-1"], r"--class -1 is not allowed: classes are 0\.\.9"),
    ("uncond", ["--class", "3"], "not class-conditional"),
    ("cond", ["--class", "3", "--guidance-scale", "-1"], r"--guidance-scale -1\.0 is not allowed"),
    ("cond", ["--class", "3", "--guidance-scale", "nan"], r"--guidance-scale nan is not allowed"),
    ("cond", ["--guidance-scale", "2"], "--guidance-scale needs --class"),
    ("cond", ["--n", "0"], "--n 0 is not allowed"),
    ("cond", ["--method", "dpm3"], "unknown sampler"),
    ("cond", ["--options", "{bad json"], "--options is not valid JSON"),
    ("cond", ["--calibrate", "8"], "--calibrate needs --steps"),
    ("cond", ["--calibrate", "0", "--steps", "4"], "--calibrate 0 is not allowed"),
    ("cond", ["--calibrate-batch", "4", "--steps", "4"], "--calibrate-batch needs --calibrate"),
    ("cond", ["--calibrate", "8", "--calibrate-batch", "9", "--steps", "4"], r"--calibrate-batch 9 is not allowed: it must lie in 1\.\.8"),
    ("cond", ["--calibrate", "8", "--calibrate-iterations", "0", "--steps", "4"], r"--calibrate-iterations 0 is not allowed"),
    ("cond", ["--calibrate", "8", "--steps", "4", "--method", "euler_maruyama"], "cannot be calibrated"),
    ("cond", ["--times", "missing.npz", "--steps", "4", "--method", "ddim"], "--times missing.npz: cannot read"),
])
def test_bad_input_gets_a_clear_error(runs, tmp_path, capsys, run, args, match):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(runs / run), "--out", str(tmp_path / "x.png"), "--no-progress", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(match, err), err
    assert not (tmp_path / "x.png").exists()


def test_importing_the_cli_module_keeps_scoresde_sample_callable():
    """`scoresde.sample` is the sampling function and the CLI module; after the module is imported
    the package attribute is the module, which must still sample exactly like scoresde.sampling.sample."""
    import importlib

    import scoresde
    from scoresde.analytic import gaussian_score_fn
    from scoresde.sampling import sample as sample_fn

    importlib.import_module("scoresde.sample")
    sde = scoresde.VPSDE()
    score = gaussian_score_fn(sde, 0.5, 1.0)
    a = scoresde.sample(score, sde, (16, 2), method="ddim", steps=5, generator=torch.Generator().manual_seed(1))
    b = sample_fn(score, sde, (16, 2), method="ddim", steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
