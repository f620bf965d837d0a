"""Crash safety of `python -m scoresde.train`: a training process killed with SIGKILL at a random
moment (mid-step, mid-checkpoint-write, mid-log-line) and resumed with --resume ends with exactly
the parameters, optimizer, EMA and RNG streams of an uninterrupted run, and a metrics.csv with each
step once; SIGTERM / SIGINT finish the step, write a checkpoint and exit 143 / 130; a corrupted or
truncated newest checkpoint makes --resume fall back to the previous one with a warning naming it.

The truth is an uninterrupted run of the same config trained in this process (bitwise equal on the
CPU to a subprocess's: one thread, the same ops).
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde.checkpoint import CheckpointWarning, list_checkpoints, load_checkpoint
from scoresde.config import load_config
from scoresde.train import Trainer, main, train_loop

from test_train import TOY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
STEPS = 150
RUN = TOY + [f"train.steps={STEPS}", "train.log_every=10", "sample.steps=5", "sample.n=50"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final training state of an uninterrupted run (checkpointing does not touch the RNG streams,
    so every train.ckpt_every gives this same state)."""
    tr = Trainer(load_config(None, RUN))
    train_loop(tr, tmp_path_factory.mktemp("reference"), progress=False)
    return tr.state_dict()


def assert_equal(a, b, where="state"):
    """Exact equality of nested checkpoint states (tensors bitwise)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a.keys() ^ b.keys())} differ"
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scoresde.train", "--run-dir", str(run_dir), "--no-progress",
                             *RUN, *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the training process exited ({proc.returncode}) too early:\n{err[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("the training process did not get going in time")
        time.sleep(0.005)


def assert_resumed_run_is_exact(run_dir: Path, uninterrupted: dict) -> None:
    main(["--resume", str(run_dir), "--no-progress"])
    final = load_checkpoint(run_dir)
    assert final["step"] == STEPS
    assert_equal({**final, "config": None}, {**uninterrupted, "config": None})  # ckpt_every and keep_last differ
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    assert steps == list(range(10, STEPS + 1, 10)), "metrics.csv must hold each logged step once"


def kill_and_resume(run_dir: Path, uninterrupted: dict, ckpt_every: int, rng: random.Random,
                    mid_write: bool = False) -> str:
    """SIGKILL the run at a random moment: once it has checkpointed a random step in the first half
    of the run, after a further random delay of up to 50 ms (checkpoint writes take ~30 ms here, a
    step ~4 ms), or (mid_write) as soon as a checkpoint's temporary file exists; resume; compare.
    Returns where the kill landed."""
    proc = start(run_dir, f"train.ckpt_every={ckpt_every}", "train.keep_last=2")
    target, delay = rng.randint(1, STEPS // 2), rng.uniform(0.0, 0.05)
    wait_until(lambda: any(s >= target for s, _ in list_checkpoints(run_dir)), proc)
    if mid_write:
        delay = 0.0
        wait_until(lambda: any(p.name.endswith(".tmp") for p in run_dir.iterdir()), proc)
    else:
        time.sleep(delay)
    assert proc.poll() is None, "the run finished before the kill: it would test nothing"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in run_dir.iterdir() if "ckpt" in p.name)
    where = f"{target} + {delay * 1000:.0f} ms; left {left}"
    assert list_checkpoints(run_dir)[-1][0] < STEPS
    assert_resumed_run_is_exact(run_dir, uninterrupted)
    return where


def test_sigkill_at_a_random_moment_then_resume_is_exact(tmp_path, uninterrupted):
    # a checkpoint every 3 steps: most kills land mid-write, the others mid-step or mid-log-line
    where = kill_and_resume(tmp_path / "run", uninterrupted, ckpt_every=3, rng=random.Random())
    print(f"SIGKILL after checkpoint step {where}")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_sigkill_many_moments_then_resume_is_exact(tmp_path, uninterrupted, trial):
    ckpt_every = (1, 4, 10, 25)[trial % 4]
    mid_write = trial >= 8
    where = kill_and_resume(tmp_path / "run", uninterrupted, ckpt_every, random.Random(), mid_write)
    print(f"trial {trial}: ckpt_every {ckpt_every}, SIGKILL {'mid-write ' if mid_write else ''}after checkpoint "
          f"step {where}")


def stop_with(sig: int, tmp_path: Path, uninterrupted: dict) -> None:
    run_dir = tmp_path / "run"
    # no periodic checkpoint: the one written on the signal is the only one
    proc = start(run_dir, f"train.ckpt_every={10 * STEPS}")
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and
               len((run_dir / "metrics.csv").read_text().splitlines()) > 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    (step, _), = list_checkpoints(run_dir)
    assert 10 <= step < STEPS and f"stopped at step {step}" in err, err[-2000:]
    assert_resumed_run_is_exact(run_dir, uninterrupted)


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, uninterrupted):
    stop_with(signal.SIGTERM, tmp_path, uninterrupted)


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_exits_130(tmp_path, uninterrupted):
    stop_with(signal.SIGINT, tmp_path, uninterrupted)


@pytest.mark.parametrize("damage", ["truncated", pytest.param("corrupted", marks=pytest.mark.slow),
                                    pytest.param("checksum file emptied", marks=pytest.mark.slow)])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    overrides = TOY + ["sample.steps=5", "sample.n=50"]
    full = Trainer(load_config(None, overrides))
    train_loop(full, tmp_path / "full", progress=False)

    run_dir = tmp_path / "run"
    main(["--run-dir", str(run_dir), "--no-progress", *overrides])
    newest = run_dir / "ckpt_00000024.pt"
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 3])
    elif damage == "corrupted":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        newest.with_name(newest.name + ".sha256").write_text("")
    with pytest.warns(CheckpointWarning, match=r"skipping checkpoint .*ckpt_00000024\.pt.*ckpt_00000016\.pt"):
        main(["--resume", str(run_dir), "--no-progress"])
    # training went on from step 16 and rewrote step 24 as an uninterrupted run has it; the damaged
    # file was set aside, not deleted
    assert_equal(load_checkpoint(newest), full.state_dict())
    assert (run_dir / "superseded" / newest.name).read_bytes() != newest.read_bytes()
