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
from scoresde.distributed import World
from scoresde.sample import main, prior_draws, share_indices
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

    x_T = prior_draws(model.sde, (1, 8, 8), 5, torch.arange(N))
    want = sample(by_hand, model.sde, method="ddim", steps=STEPS, x_T=x_T)
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
    ("cond", ["--batch-size", "0"], "--batch-size 0 is not allowed"),
    ("cond", ["--device", "tpu"], "--device 'tpu' is not"),
    ("cond", ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda"),
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


def test_batch_size_does_not_change_a_sample(runs, tmp_path):
    """A sample depends on its own seed only, not on its batch-mates: the deterministic ddim run in
    chunks of 3 equals the run of all 8 at once."""
    whole = run_cli(runs / "cond", tmp_path / "all.png", "--class", "3")
    chunked = run_cli(runs / "cond", tmp_path / "b3.png", "--class", "3", "--batch-size", "3")
    close(chunked["samples"], whole["samples"])
    np.testing.assert_array_equal(chunked["indices"], np.arange(N))


def test_ranks_share_the_chunks_of_one_run():
    """P processes take chunks r, r + P, ... of the one-process chunking: disjoint, and together 0..n-1."""
    shares = [share_indices(10, 3, World(r, 3)).tolist() for r in range(3)]
    assert shares == [[0, 1, 2, 9], [3, 4, 5], [6, 7, 8]]
    assert share_indices(2, 3, World(1, 2)).tolist() == []


def test_two_processes_write_the_one_process_samples(runs, tmp_path):
    """`torchrun --nproc_per_node=2`: each rank writes its chunks; with a stochastic method (noise
    seeded per chunk) the union, ordered by index, is the one-process run at the same --batch-size."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    args = ["--checkpoint", str(runs / "uncond"), "--method", "euler_maruyama", "--steps", str(STEPS), "--num-samples",
            "7", "--batch-size", "2", "--seed", "5", "--no-progress"]
    root = Path(__file__).resolve().parents[1]

    def torchrun(*extra):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "scoresde.sample", *args, "--out", str(tmp_path / "d.png"), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    torchrun("--png-dir", str(tmp_path / "pngs"))
    main([*args, "--out", str(tmp_path / "one.png")])
    one = np.load(tmp_path / "one.npz")
    shares = [np.load(tmp_path / f"d_rank{rank}.npz") for rank in (0, 1)]
    np.testing.assert_array_equal(shares[0]["indices"], [0, 1, 4, 5])
    np.testing.assert_array_equal(shares[1]["indices"], [2, 3, 6])
    union = np.concatenate([s["samples"] for s in shares])[np.argsort(np.concatenate([s["indices"] for s in shares]))]
    close(union, one["samples"])
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"{i}.png" for i in range(7)]


def test_a_process_without_a_chunk_writes_an_empty_share(runs, tmp_path):
    """More processes than chunks: rank 1 of 2 has no chunk of 8 when n = 7, and writes an empty share."""
    import importlib

    cli = importlib.import_module("scoresde.sample")
    args = cli.parse_args(["--checkpoint", str(runs / "uncond"), "--method", "ddim", "--steps", "2", "--n", "7",
                           "--batch-size", "8", "--out", str(tmp_path / "d.png"), "--no-progress"])
    cli._sample_share(args, torch.device("cpu"), World(1, 2))
    share = np.load(tmp_path / "d_rank1.npz")
    assert share["samples"].shape == (0, 1, 8, 8) and share["indices"].shape == (0,)


def test_no_ema_samples_with_the_raw_weights(runs, tmp_path):
    """--no-ema is sampling with the checkpoint's raw weights (EMA decay 0.5: they differ from the EMA)."""
    raw = run_cli(runs / "uncond", tmp_path / "raw.png", "--no-ema")
    ema = run_cli(runs / "uncond", tmp_path / "ema.png")
    model = load_run(runs / "uncond", use_ema=False).model
    want = sample(model.score_fn(None), model.sde, method="ddim", steps=STEPS,
                  x_T=prior_draws(model.sde, (1, 8, 8), 5, torch.arange(N)))
    close(raw["samples"], want.float().numpy())
    assert not np.allclose(raw["samples"], ema["samples"], rtol=1e-3, atol=1e-3)


def test_png_dir_holds_the_quantized_samples(runs, tmp_path):
    """Each PNG is sample i quantized to its level v = floor((x + 1) L / 2) (clamped to 0..L-1) and
    mapped to uint8 by round(v 255 / (L - 1)), L = 17 for digits; the .npz `images` are the same,
    and scoresde.metrics reads the folder (grey repeated to RGB)."""
    from PIL import Image

    from scoresde.metrics.image_sources import image_source

    got = run_cli(runs / "uncond", tmp_path / "p.png", "--png-dir", str(tmp_path / "pngs"))
    levels = 17
    v = np.clip(np.floor((got["samples"].astype(np.float64) + 1) * levels / 2), 0, levels - 1)
    want = np.round(v * 255 / (levels - 1)).astype(np.uint8)
    files = sorted((tmp_path / "pngs").iterdir())
    assert [f.name for f in files] == [f"{i}.png" for i in range(N)]
    pngs = np.stack([np.asarray(Image.open(f)) for f in files])[:, None]
    np.testing.assert_array_equal(pngs, want)
    np.testing.assert_array_equal(got["images"], want)
    assert len(np.unique(want)) > 2  # the samples span several levels: the test sees the mapping
    source = image_source(tmp_path / "pngs")
    read = torch.cat(list(source.batches(4)))
    assert read.shape == (N, 3, 8, 8) and (read == torch.from_numpy(want)).all()


def test_png_dir_needs_image_data(tmp_path, capsys):
    from scoresde.checkpoint import save_checkpoint

    save_checkpoint(Trainer(load_config(None, ["train.steps=1"])).state_dict(), tmp_path / "toy", 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "toy"), "--out", str(tmp_path / "x.png"), "--png-dir",
              str(tmp_path / "pngs"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "--png-dir: the model in" in capsys.readouterr().err and not (tmp_path / "pngs").exists()


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


def test_without_method_it_samples_as_the_run_config_does(runs, tmp_path, capsys):
    """No --method: the run config's [sample] method (here the default config's), with --steps kept."""
    cfg_method = load_run(runs / "uncond").config.sample.method
    main(["--checkpoint", str(runs / "uncond"), "--steps", "3", "--n", "2", "--out", str(tmp_path / "d.png"),
          "--no-progress"])
    assert capsys.readouterr().out.strip().endswith(f"(2 samples, {cfg_method})")
