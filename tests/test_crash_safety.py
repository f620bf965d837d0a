"""Crash safety of `python -m scoresde.train`: a training process killed with SIGKILL at a random
moment (mid-step, mid-checkpoint-write, mid-log-line) and resumed with --resume ends with exactly
the parameters, optimizer, EMA and RNG streams of an uninterrupted run, and a metrics.csv with each
step once; SIGTERM / SIGINT finish the step, write a checkpoint and exit 143 / 130, and during the
end-of-run evaluation stop it at once; a corrupted or truncated newest checkpoint makes --resume
fall back to the previous one with a warning naming it. Run directories: two writers (two fresh
runs, or two resumes of one run) cannot both proceed, the second stops at once naming the first;
a fresh run or a resume into another directory never touches a run that is there; a run copied
without its checksum files loses nothing. Ctrl-C on sample / evaluate exits 130 with one line.

The truth is an uninterrupted run of the same config trained in this process (bitwise equal on the
CPU to a subprocess's: one thread, the same ops).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde.checkpoint import CheckpointWarning, list_checkpoints, load_checkpoint
from scoresde.rundir import RunLock
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


# -- run directories: one writer, nothing of another run touched ------------------------------------
def _lock_holder(run_dir: Path) -> int | None:
    import json
    try:
        text = (run_dir / ".lock").read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)["pid"] if text.strip() else None


def _second_writer_fails(run_dir: Path, holder: subprocess.Popen, *args: str) -> None:
    wait_until(lambda: _lock_holder(run_dir) == holder.pid, holder)
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "scoresde.train", "--no-progress", *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"is in use by another run: PID {holder.pid}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr and time.monotonic() - t0 < 60
    assert holder.poll() is None, "the holder finished first: the test would prove nothing"


def test_two_fresh_runs_on_one_run_directory_cannot_both_proceed(tmp_path):
    run_dir = tmp_path / "run"
    first = start(run_dir, f"train.ckpt_every={10 * STEPS}", "train.steps=100000")
    try:
        _second_writer_fails(run_dir, first, "--run-dir", str(run_dir), *RUN, "train.seed=1")
    finally:
        first.kill()
        first.communicate()
    assert load_config(run_dir / "config.toml").train.seed == 0  # the first run's files only


@pytest.mark.slow
def test_two_resumes_of_one_run_cannot_both_proceed(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    first = start(run_dir, f"train.ckpt_every={10 * STEPS}")
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and
               len((run_dir / "metrics.csv").read_text().splitlines()) > 1, first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-2000:]
    one = subprocess.Popen([sys.executable, "-m", "scoresde.train", "--resume", str(run_dir), "--no-progress"],
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _second_writer_fails(run_dir, one, "--resume", str(run_dir))
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-2000:]
    final = load_checkpoint(run_dir)
    assert_equal({**final, "config": None}, {**uninterrupted, "config": None})
    assert not (run_dir / "superseded").exists()


def test_sigterm_during_the_end_of_run_evaluation_stops_it(tmp_path):
    run_dir = tmp_path / "run"
    # a long evaluation: 2000 samples x 100000 Euler-Maruyama steps
    proc = start(run_dir, "train.steps=20", "sample.steps=100000", "sample.n=2000")
    wait_until(lambda: any(s == 20 for s, _ in list_checkpoints(run_dir)), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped the end-of-run evaluation; the checkpoint of step 20 is saved" in err and "Traceback" not in err
    assert not (run_dir / "summary.json").exists() and load_checkpoint(run_dir)["step"] == 20


def test_a_run_copied_without_checksums_loses_nothing(tmp_path, capsys):
    """The issue's case: a finished run copied without its .sha256 files. A fresh run into it is
    refused (nothing removed, metrics kept); --resume verifies each checkpoint by loading it,
    re-sums it with a warning, and continues."""
    overrides = TOY + ["sample.steps=5", "sample.n=50"]
    src = tmp_path / "src"
    main(["--run-dir", str(src), "--no-progress", *overrides])
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.sha256", ".lock"))
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--run-dir", str(copy), "--no-progress", *overrides, "train.seed=1"])
    assert exit_.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.name != ".lock"} == before
    with pytest.warns(CheckpointWarning, match=r"ckpt_00000024\.pt had no checksum file"):
        main(["--resume", str(copy), "--no-progress", "train.steps=28"])
    assert [s for s, _ in list_checkpoints(copy)] == [8, 16, 24, 28]
    assert all((copy / n).read_bytes() == data for n, data in before.items() if n.startswith("ckpt_"))


def test_resume_into_a_directory_holding_another_run_is_refused(tmp_path, capsys):
    overrides = TOY + ["sample.steps=5", "sample.n=50"]
    for name, seed in (("a", 0), ("b", 1)):
        main(["--run-dir", str(tmp_path / name), "--no-progress", *overrides, f"train.seed={seed}"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--resume", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b"), "--no-progress", "train.steps=30"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--run-dir {tmp_path / 'b'}" in err and "already holds a run" in err, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()} == before
    # into a new directory it continues run a there, leaving a's own directory as it was
    main(["--resume", str(tmp_path / "a"), "--run-dir", str(tmp_path / "c"), "--no-progress", "train.steps=28"])
    assert [s for s, _ in list_checkpoints(tmp_path / "c")] == [28]
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [8, 16, 24]


@pytest.mark.parametrize("module", ["sample", "evaluate"])
def test_ctrl_c_on_sample_and_evaluate_exits_130_with_one_line(tmp_path, module):
    run_dir = tmp_path / "run"
    main(["--run-dir", str(run_dir), "--no-progress", *TOY, "sample.steps=5", "sample.n=50"])
    long = {"sample": ["--out", str(tmp_path / "s.png"), "--n", "2000", "--steps", "1000000",
                       "--method", "euler_maruyama"],
            "evaluate": ["--n", "1000", "--rtol", "1e-9", "--atol", "1e-9", "--batch-size", "1000"]}[module]
    # SIGINT's default disposition in the child, as under a terminal: a shell's background job
    # (`cmd &`) ignores SIGINT, and a Python started with it ignored never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", f"scoresde.{module}", "--checkpoint", str(run_dir), *long],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []

    def progress_started():  # tqdm's first bar on stderr: main() is running
        if _readable(proc.stderr):
            seen.append(os.read(proc.stderr.fileno(), 4096).decode(errors="replace"))
        return "|" in "".join(seen)

    try:
        wait_until(progress_started, proc)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()  # no-op once it exited; a child that ignored the signal must not outlive the test
    text = "".join(seen) + rest
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and text.strip().splitlines()[-1].endswith("interrupted"), text[-2000:]


def _readable(stream) -> bool:
    import select
    return bool(select.select([stream], [], [], 0.05)[0])
