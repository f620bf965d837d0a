"""Data-parallel training: `torchrun --nproc_per_node=2` (gloo, CPU) ends with the parameters of one
process training on the same global batch (up to the all-reduce's float rounding), and checkpoints
move between world sizes: a 2-process checkpoint resumes in 1 process and a 1-process one in 2.

SIGTERM to one rank stops every rank at the same step with a checkpoint.

The truth throughout is a one-process run of the same config trained in this process. Per-rank
sharding itself is checked against the one-process per-sample losses and gradient, without torchrun.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde import distributed
from scoresde.checkpoint import list_checkpoints, load_checkpoint
from scoresde.config import ConfigError, load_config
from scoresde.losses import RowsModel, SplitLoss, dsm_loss
from scoresde.train import Trainer, train_loop

from test_crash_safety import assert_equal
from test_train_scale import plain
from test_train import DIGITS, TOY

ROOT = Path(__file__).resolve().parents[1]
RUN = TOY + ["sample.steps=5", "sample.n=50"]   # 24 steps, global batch 64, checkpoints at 8, 16, 24
# rounding: the gradient all-reduce sums the two halves in another order than one process does;
# over 20-24 Adam steps the parameters drift apart by ~1e-7 (measured); training each rank on a
# batch of half the size instead moves them by 4e-2 and the EMA by 4e-4 (measured)
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "scoresde.train", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def assert_close(saved: dict, trainer: Trainer, atol: float = ATOL) -> None:
    for name, ours in (("model", trainer.model.state_dict()), ("ema", trainer.ema.state_dict()["module"])):
        theirs = saved[name] if name == "model" else saved[name]["module"]
        assert theirs.keys() == ours.keys()
        for k in ours:
            diff = (theirs[k] - ours[k]).abs().max().item()
            assert diff <= atol, f"{name}.{k} differs by {diff:.2e}"


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one")
    tr = Trainer(load_config(None, RUN))
    train_loop(tr, run_dir, progress=False)
    return tr, run_dir


@pytest.fixture
def one_process(one_run):
    return one_run[0]


def test_two_processes_match_one_and_resume_in_one(tmp_path, one_process):
    run_dir = tmp_path / "two"
    r = torchrun(2, "--run-dir", str(run_dir), *RUN)
    assert r.stdout.count("step 24:") == 1  # rank 0 alone prints the summary
    final = load_checkpoint(run_dir)
    assert final["step"] == 24 and len(final["rng_ranks"]) == 1
    assert_close(final, one_process)
    # the data stream and noise generator are world-size independent: equal to one process's exactly
    assert torch.equal(final["noise"], one_process.noise.get_state())
    assert torch.equal(final["data"]["generator"], one_process.stream.generator.get_state())
    # rank 0 alone wrote: one metrics row per logged step
    assert (run_dir / "metrics.csv").read_text().count("\n24,") == 1

    # the 2-process checkpoint of step 8 resumes in this (1-)process and ends where one process does
    resumed = Trainer(load_config(None, RUN))
    resumed.load_state_dict(load_checkpoint(run_dir / "ckpt_00000008.pt"))
    train_loop(resumed, tmp_path / "resumed", progress=False)
    assert_close(resumed.state_dict(), one_process)


def test_two_processes_with_micro_batches_match_one_whole_batch(tmp_path, one_process):
    """The global batch fixes the result: 2 ranks x 4 passes of 8 rows = one process's batch of 64."""
    run_dir = tmp_path / "micro"
    torchrun(2, "--run-dir", str(run_dir), *RUN, "train.micro_batch=8")
    final = load_checkpoint(run_dir)
    assert_close(final, one_process)
    assert torch.equal(final["noise"], one_process.noise.get_state())


def test_micro_batch_must_divide_the_per_process_batch(monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 4, 0))
    with pytest.raises(ConfigError, match=r"train.micro_batch=32 does not divide the per-process batch of 16 rows "
                                          r"\(train.batch_size=64 over 4 processes\)"):
        Trainer(load_config(None, TOY + ["train.micro_batch=32"]))


@pytest.mark.slow
def test_one_process_checkpoint_resumes_in_two(tmp_path, one_run):
    one_process, one_dir = one_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("ckpt_00000008.pt", "ckpt_00000008.pt.sha256"):
        shutil.copy(one_dir / name, run_dir / name)
    torchrun(2, "--resume", str(run_dir))
    final = load_checkpoint(run_dir)
    assert final["step"] == 24 and len(final["rng_ranks"]) == 1
    assert_close(final, one_process)


@pytest.mark.parametrize("form", ["split", "plain"])
def test_a_rank_s_rows_get_one_process_losses_and_gradients(form):
    """What each rank computes: per-sample losses of its rows exactly as one process computes them
    on the whole batch, and gradients that sum (DDP averages, times the world size) to the batch's;
    for a split loss (its rows' per_sample) and a plain one (replayed, the network on the rows only)."""
    tr = Trainer(load_config(None, RUN))
    x, _ = next(tr.stream)
    state = tr.noise.get_state()
    loss = dsm_loss if form == "split" else SplitLoss.of(plain(dsm_loss))

    def rows(lo, hi):
        tr.noise.set_state(state)
        per = loss.prepare(tr.model, tr.sde, x, generator=tr.noise).per_sample(tr.model, lo, hi)
        tr.model.zero_grad()
        per.mean().backward()
        return per.detach(), [p.grad.clone() for p in tr.model.parameters()]

    tr.noise.set_state(state)
    whole = dsm_loss(tr.model, tr.sde, x, generator=tr.noise, reduce=False)
    whole.mean().backward()
    g_whole = [p.grad.clone() for p in tr.model.parameters()]
    grads = []
    for lo, hi in ((0, 32), (32, 64)):
        per, g = rows(lo, hi)
        assert torch.equal(per, whole[lo:hi].detach())
        grads.append(g)
    for a, b, w in zip(*grads, g_whole):
        torch.testing.assert_close((a + b) / 2, w, rtol=1e-5, atol=1e-7)
    if form == "plain":
        with pytest.raises(ValueError, match="called the model on 10 samples, expected the batch of 64"):
            RowsModel(tr.model, tr.model, 0, 32, 64)(x[:10], torch.full((10,), 0.5))


def test_batch_size_must_divide_by_the_world_size(monkeypatch):
    assert distributed.shard(64, distributed.World(1, 4)) == (16, 32)
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 3))
    with pytest.raises(ConfigError, match="train.batch_size: batch_size=64 is not divisible by the world size 3"):
        Trainer(load_config(None, RUN))


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_with_a_checkpoint_that_resumes_in_one(tmp_path):
    run = RUN + ["train.steps=400", "train.ckpt_every=4000", "train.log_every=10"]
    run_dir = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "scoresde.train", "--no-progress", "--run-dir", str(run_dir), *run]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 1):
        assert agent.poll() is None and time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.01)
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGTERM)   # one rank only: the other must stop at the same step
    _, err = agent.communicate(timeout=120)
    assert "exitcode: 143" in err, err[-3000:]
    (step, path), = list_checkpoints(run_dir)
    assert 10 <= step < 400 and f"stopped at step {step}" in err

    full = Trainer(load_config(None, run))
    train_loop(full, tmp_path / "one", progress=False)
    resumed = Trainer(load_config(None, run))
    resumed.load_state_dict(load_checkpoint(path))
    train_loop(resumed, tmp_path / "resumed", progress=False)
    assert_close(resumed.state_dict(), full)


@pytest.mark.slow
def test_two_process_resume_with_dropout_is_exact(tmp_path):
    # dropout draws from each rank's own global RNG; a checkpoint holds every rank's, so a 2-process
    # run resumed in 2 processes ends exactly where the uninterrupted 2-process run does
    run = DIGITS + ["sample.steps=5", "sample.n=20"]
    torchrun(2, "--run-dir", str(tmp_path / "full"), *run)
    (tmp_path / "resumed").mkdir()
    for name in ("ckpt_00000003.pt", "ckpt_00000003.pt.sha256"):
        shutil.copy(tmp_path / "full" / name, tmp_path / "resumed" / name)
    torchrun(2, "--resume", str(tmp_path / "resumed"))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema", "optimizer", "rng", "rng_ranks"):
        assert_equal(a[part], b[part], part)
    assert not torch.equal(a["rng_ranks"][0]["torch"], a["rng"]["torch"])  # ranks drop out independently
