"""What a run leaves for its user besides checkpoints: progress bars over the end-of-run sampling
and bits/dim (silenced by --no-progress), a clear error naming the extra when an optional
dependency is missing (before any training), a count of the samples outside the scatter plot's
axes, the loss curve of the whole run (loss.png), and the samples figure and final metrics in
TensorBoard (read back with tensorboard's own EventAccumulator)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from scoresde.config import load_config
from scoresde.evaluation import evaluate_run
from scoresde.figures import loss_figure, scatter_figure
from scoresde.train import Trainer, main

TOY = ["model.hidden=16", "model.depth=2", "model.embed_dim=8", "train.batch_size=32", "train.steps=8",
       "train.ckpt_every=4", "train.log_every=4", "train.tensorboard=false", "sample.steps=5", "sample.n=50"]
DIGITS = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
          "model.attn_resolutions=[]", "train.steps=1", "sample.method=ddim", "sample.steps=3", "sample.n=4",
          "eval.bpd_n=3"]


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures saved during a test, in order (each is also written to its file)."""
    figures, real = [], Figure.savefig

    def savefig(fig, *args, **kwargs):
        figures.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def test_scatter_figure_counts_samples_outside_the_axes(tmp_path, saved_figures):
    data = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    lim = float(np.percentile(data.abs().numpy(), 99.9)) * 1.25  # the axes' half-width, as documented
    samples = torch.zeros(300, 2)
    samples[:5, 0] = 1e3              # far right
    samples[5:7, 1] = -lim - 0.01     # just below the axes
    samples[7, 0] = float("nan")      # non-finite: never drawn, so counted
    samples[8, 1] = 0.99 * lim        # inside
    scatter_figure(samples, data, tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()
    titles = [ax.get_title() for ax in saved_figures[-1].axes]
    assert titles == ["held-out data (n=500)", "samples (n=300; 8 of 300 outside the axes)"]


def test_missing_extra_fails_before_training_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as exit_:
        main(["--run-dir", str(tmp_path / "run"), "--no-progress", *TOY])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "needs matplotlib, which is not installed" in err and 'pip install -e ".[train]"' in err
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_progress_over_sampling_and_bits_per_dim(tmp_path, capsys):
    cfg = load_config(None, DIGITS)
    trainer = Trainer(cfg)
    metrics, _ = evaluate_run(cfg, trainer.ema.module, trainer.dataset, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "ddim" in err and "3/3" in err          # the sampler's bar over its 3 steps
    assert "bits/dim" in err and "3/3 [" in err    # the bits/dim bar over the 3 test images
    assert np.isfinite(metrics["test_bpd"])
    evaluate_run(cfg, trainer.ema.module, trainer.dataset, tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_train_cli_no_progress_is_silent(tmp_path, capsys):
    main(["--run-dir", str(tmp_path / "run"), "--no-progress", *TOY])
    assert capsys.readouterr().err == ""


def test_loss_figure_draws_the_whole_resumed_run_and_tensorboard_gets_the_results(tmp_path, saved_figures):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    main(["--run-dir", str(run_dir), "--no-progress", *TOY, "train.tensorboard=true"])
    main(["--resume", str(run_dir), "--no-progress", "train.steps=12"])
    assert (run_dir / "loss.png").is_file()
    # the resumed run's loss.png: every row of metrics.csv, the first run's included
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    loss_axes = next(f for f in reversed(saved_figures) if f.axes[0].get_title() == "loss").axes[0]
    x, y = loss_axes.lines[0].get_data()
    assert list(x) == [4, 8, 12] and list(y) == pytest.approx([float(r["loss"]) for r in rows])

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    summary = json.loads((run_dir / "summary.json").read_text())
    tags = events.Tags()
    assert "samples" in tags["images"] and {"train/loss", "eval/sw2", "eval/mmd"} <= set(tags["scalars"])
    image = events.Images("samples")[-1]
    assert image.step == 12 and image.encoded_image_string.startswith(b"\x89PNG")
    for name in ("sw2", "mmd", "sw2_floor", "nonfinite_samples"):
        (last,) = [e for e in events.Scalars(f"eval/{name}") if e.step == 12]
        assert last.value == pytest.approx(summary[name], rel=1e-6)


def test_loss_figure_reads_metrics_csv(tmp_path, saved_figures):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,grad_norm,lr,skipped,steps_per_s,elapsed_s\n"
                    "10,2.5,1.0,1e-4,0,5,2\n20,1.5,0.5,1e-4,0,5,4\n30,nan,0.25,1e-4,10,5,6\n")
    loss_figure(path, tmp_path / "loss.png")
    loss_ax, grad_ax = saved_figures[-1].axes
    assert list(loss_ax.lines[0].get_xdata()) == [10, 20, 30]
    assert list(grad_ax.lines[0].get_ydata()) == [1.0, 0.5, 0.25]
    assert loss_ax.get_yscale() == "log" and (tmp_path / "loss.png").stat().st_size > 0


def test_sample_cli_checks_its_extra_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    from scoresde.sample import main as sample_main

    with pytest.raises(SystemExit) as exit_:  # the checkpoint does not exist: the extra is checked first
        sample_main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "needs PIL, which is not installed" in err and '".[train]"' in err
