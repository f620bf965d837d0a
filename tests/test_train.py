"""Training: k steps + resume == an uninterrupted run, bitwise on the CPU (toy data, and digits with
dropout and dequantization); linear warmup; the CLI run writes its config, metrics, checkpoints,
figure and summary; the default run's samples match held-out data up to the noise floor (slow)."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import torch

from scoresde.checkpoint import CheckpointError, flatten, list_checkpoints, load_checkpoint
from scoresde.config import ConfigError, config_to_dict, load_config
from scoresde.losses import SplitLoss
from scoresde.train import NonFiniteError, Trainer, main, parse_args, prepare, train_loop

TOY = ["model.hidden=32", "model.depth=2", "model.embed_dim=16", "train.batch_size=64", "train.steps=24",
       "train.ckpt_every=8", "train.keep_last=10", "train.log_every=4", "train.tensorboard=false",
       "train.warmup=10"]
DIGITS = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
          "model.attn_resolutions=[]", "model.dropout=0.2", "train.batch_size=16", "train.steps=6",
          "train.ckpt_every=3", "train.keep_last=10", "train.log_every=3", "train.tensorboard=false"]



def assert_same_state(a: Trainer, b: Trainer):
    for name in ("model", "ema", "optimizer"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        fa, fb = flatten(sa), flatten(sb)
        assert fa.keys() == fb.keys()
        for k in fa:
            if torch.is_tensor(fa[k]):
                assert torch.equal(fa[k], fb[k]), f"{name}.{k} differs"
            else:
                assert fa[k] == fb[k], f"{name}.{k} differs"


@pytest.mark.parametrize("overrides, k", [(TOY, 8), (DIGITS, 3)], ids=["toy", "digits"])
def test_resume_is_bitwise_exact(tmp_path, overrides, k):
    cfg = load_config(None, overrides)
    full = Trainer(cfg)
    train_loop(full, tmp_path / "full", progress=False)
    assert full.step_count == cfg.train.steps

    # a fresh process-like start: resume from the step-k checkpoint through the CLI's path
    torch.manual_seed(12345)
    ckpt = tmp_path / "full" / f"ckpt_{k:08d}.pt"
    cfg2, run_dir, state = prepare(parse_args(["--resume", str(ckpt)]))
    assert run_dir == tmp_path / "full" and config_to_dict(cfg2) == config_to_dict(cfg)
    resumed = Trainer(cfg2)
    resumed.load_state_dict(state)
    assert resumed.step_count == k
    train_loop(resumed, tmp_path / "resumed", progress=False)
    assert_same_state(full, resumed)

    # and a run that was not resumed differs (the test can fail)
    other = Trainer(load_config(None, overrides + ["train.seed=1"]))
    train_loop(other, tmp_path / "other", progress=False)
    assert not torch.equal(next(other.model.parameters()), next(full.model.parameters()))


def test_checkpoint_holds_everything_for_resume(tmp_path):
    cfg = load_config(None, TOY)
    tr = Trainer(cfg)
    train_loop(tr, tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 16, 24]
    state = load_checkpoint(tmp_path)
    assert state["step"] == 24 and state["config"] == config_to_dict(cfg)
    assert {"model", "ema", "optimizer", "scheduler", "data", "noise", "rng"} <= state.keys()
    assert {"torch", "numpy", "python", "cuda"} == state["rng"].keys()


def test_linear_warmup_and_metrics_csv(tmp_path):
    cfg = load_config(None, TOY)
    train_loop(Trainer(cfg), tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16, 20, 24]
    # the update after step s uses lr * min(1, (s + 1) / warmup)
    for r in rows:
        s = int(r["step"])
        assert float(r["lr"]) == pytest.approx(cfg.train.lr * min(1.0, (s + 1) / cfg.train.warmup))
    assert all(float(r["loss"]) > 0 and float(r["steps_per_s"]) > 0 for r in rows)


def test_bad_runtime_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size.*larger than the data set"):
        Trainer(load_config(None, ["data.name=digits", "model.name=unet", "train.batch_size=5000"]))
    with pytest.raises(ConfigError, match="model.class_cond=true but data set 'ring8' has no labels"):
        Trainer(load_config(None, ["model.class_cond=true"]))
    with pytest.raises(ConfigError, match="sde"):
        Trainer(load_config(None, ["sde.beta_max=-1"]))


def test_cli_run_writes_everything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "--no-progress", *TOY, "train.steps=40", "train.ckpt_every=20",
            "sample.steps=20", "sample.n=200"]
    result = main(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "SW2" in out[0] and "noise floor" in out[0] and "MMD" in out[0]
    assert {"config.toml", "metrics.csv", "samples.png", "summary.json", "ckpt_00000040.pt"} <= \
        {p.name for p in run_dir.iterdir()}
    assert config_to_dict(load_config(run_dir / "config.toml")) == config_to_dict(load_config(None, args[3:]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 40 and summary["nonfinite_samples"] == 0
    assert summary["sw2"] > 0 and summary["sw2_floor"] > 0 and result.steps == 40
    # the same run directory without --resume is refused (exit 2); with it, training continues
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "already holds a run (ckpt_00000020.pt" in capsys.readouterr().err
    main(["--resume", str(run_dir), "--no-progress", "train.steps=44"])
    assert load_checkpoint(run_dir)["step"] == 44


@pytest.mark.slow
def test_default_run_matches_heldout_data(tmp_path):
    # the embedded default (ring of 8 Gaussians): samples as close to held-out draw A as further
    # held-out draws are: SW2 below 1.5x their mean, MMD below their largest plus 2e-3
    # (the untrained model scores SW2 > 100 and MMD 0.9 here)
    result = main(["--run-dir", str(tmp_path / "run"), "--no-progress"])
    m = result.metrics
    assert m["sw2"] < 1.5 * m["sw2_floor"], m
    assert m["mmd"] < max(m["mmd_floor_draws"]) + 2e-3, m
    shutil.rmtree(tmp_path / "run")


# -- numerical guards ------------------------------------------------------------------------------
def poison(trainer: Trainer, loss_steps=(), grad_steps=()):
    """Make the loss non-finite at the (1-based) steps loss_steps, and one gradient at grad_steps."""
    real, param = trainer.loss, next(trainer.model.parameters())

    def loss_fn(*args, **kwargs):
        loss = real(*args, **kwargs)
        step = trainer.step_count + 1
        if step in grad_steps:
            param.register_hook(lambda g: g * float("inf") if trainer.step_count + 1 == step else g)
        return loss * float("nan") if step in loss_steps else loss

    trainer.loss = SplitLoss.of(loss_fn)  # a plain loss: run by replaying


def test_non_finite_steps_are_skipped_and_counted():
    tr = Trainer(load_config(None, TOY + ["train.max_bad_steps=3"]))
    poison(tr, loss_steps={5}, grad_steps={6})
    snapshots = {}
    while tr.step_count < 7:
        tr.step()
        state = flatten({"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "opt": tr.optimizer.state_dict()})
        snapshots[tr.step_count] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        assert tr.last_applied == (tr.step_count not in (5, 6))
    # steps 5 (NaN loss) and 6 (infinite gradient) changed no parameter, EMA or optimizer state (the
    # learning rate in opt.param_groups follows the schedule, which advances with every step)
    for k, v in snapshots[4].items():
        if k != "opt.param_groups":
            same = torch.equal if torch.is_tensor(v) else (lambda a, b: a == b)
            assert same(snapshots[5][k], v) and same(snapshots[6][k], v), k
    assert not torch.equal(snapshots[7]["model.net.out.weight"], snapshots[6]["model.net.out.weight"])
    assert tr.skipped == 2 and tr.bad_streak == 0 and tr.scheduler.last_epoch == 7


def test_skipped_steps_in_the_metrics_log(tmp_path):
    tr = Trainer(load_config(None, TOY + ["train.max_bad_steps=3"]))
    poison(tr, loss_steps={5, 7})
    train_loop(tr, tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["skipped"]) for r in rows] == [0, 2, 0, 0, 0, 0]
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)


def test_too_many_bad_steps_stop_naming_the_step_and_last_good_checkpoint(tmp_path):
    args = ["--run-dir", str(tmp_path), "--no-progress", *TOY, "train.ckpt_every=4", "train.max_bad_steps=3"]
    cfg, run_dir, _ = prepare(parse_args(args))
    tr = Trainer(cfg)
    poison(tr, loss_steps=set(range(10, 25)))
    with pytest.raises(NonFiniteError, match=r"stopped at step 12: the last 3 steps \(train.max_bad_steps=3\) "
                                             r"had a non-finite loss.*last good checkpoint is .*ckpt_00000008\.pt"):
        train_loop(tr, run_dir, progress=False)
    # no checkpoint was written during the bad steps (step 12 would have been one)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8]
    with pytest.raises(ConfigError, match="train.max_bad_steps=0 is not allowed"):
        load_config(None, ["train.max_bad_steps=0"])


# -- checkpoint compatibility ------------------------------------------------------------------------
def test_incompatible_checkpoint_names_what_differs(tmp_path, capsys):
    main(["--run-dir", str(tmp_path), "--no-progress", *TOY, "train.steps=8", "sample.steps=5", "sample.n=50"])
    for override, match in [("model.hidden=64", r"does not fit this config's model: model.hidden: checkpoint 32, "
                                                r"config 64 \(state: .*checkpoint \(32, .*\), model \(64,"),
                            ("model.depth=3", r"model.depth: checkpoint 2, config 3 .* is missing from the checkpoint")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["--resume", str(tmp_path), "--no-progress", override, "train.steps=12"])
        assert exit_.value.code == 2 and re.search(match, capsys.readouterr().err)
    # same config, but the network's code changed since (what `python -m scoresde.sample` would meet)
    state = load_checkpoint(tmp_path)
    state["model"]["net.extra.weight"] = state["model"].pop("net.out.weight")
    with pytest.raises(CheckpointError, match=r"the network's code changed \(state: net.out.weight is missing "
                                              r"from the checkpoint; net.extra.weight is in the checkpoint"):
        Trainer(load_config(None, [*TOY, "train.steps=8", "sample.steps=5", "sample.n=50"])).load_state_dict(state)
    # a setting that keeps the state's shapes is allowed, with a warning naming it
    with pytest.warns(UserWarning, match=r"sde.beta_max: checkpoint 20.0, config 10"):
        main(["--resume", str(tmp_path), "--no-progress", "sde.beta_max=10", "train.steps=10",
              "sample.steps=5", "sample.n=50"])
