"""Run directories: the lock admits one writer (a second process fails at once naming the holder),
is released when its holder dies however it dies, and a stale lock file is taken over with a warning
naming the dead process; a fresh run refuses a directory that holds another run's files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scoresde.rundir import RunDirError, RunDirWarning, RunLock, check_fresh, check_is_dir, run_files

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from scoresde.rundir import RunLock\n"
        "with RunLock(sys.argv[1], 'holder'):\n"
        "    print('locked', flush=True); time.sleep(60)\n")


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        start = time.monotonic()
        with pytest.raises(RunDirError, match=rf"in use by another run: PID {proc.pid} on {socket.gethostname()}"
                                              r", started .*\(holder\)"):
            RunLock(tmp_path / "run").acquire()
        assert time.monotonic() - start < 1.0
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the lock with its holder (SIGKILL: no clean-up ran); the record it left is stale
    with pytest.warns(RunDirWarning, match=rf"stale lock .* of PID {proc.pid} .*no longer running"):
        with RunLock(tmp_path / "run", "second") as lock:
            record = json.loads(lock.path.read_text())
            assert record["pid"] == os.getpid() and record["command"] == "second"
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released cleanly: nothing stale left


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again, with no warning
        pass


def test_fresh_run_refuses_another_runs_files(tmp_path):
    check_fresh(tmp_path / "new")
    (tmp_path / ".lock").write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    check_fresh(tmp_path)  # a stale lock and unrelated files are no run
    for name in ("ckpt_00000300.pt", "metrics.csv", "config.toml", "summary.json", "ckpt_00000300.pt.sha256"):
        (tmp_path / name).write_text("x")
        with pytest.raises(RunDirError, match=rf"already holds a run \({name}.*--resume"):
            check_fresh(tmp_path)
        (tmp_path / name).unlink()
    assert run_files(tmp_path) == []


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    for bad in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(RunDirError, match=r"f is a file, not a directory"):
            check_is_dir(bad)
        with pytest.raises(RunDirError, match="is a file"):
            RunLock(bad)
