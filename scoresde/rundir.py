"""Run directories: one writer at a time, and a fresh run never writes into another run's files.

`RunLock(run_dir)` is an exclusive advisory lock (`fcntl.flock`) on `run_dir/.lock`, a file that
holds the holder's host, PID and start time as JSON. The training run takes it for its whole
life (training, checkpoints and the end-of-run evaluation), so a second `train` on the same
directory, fresh or `--resume`, stops at once with a `RunDirError` naming the holder. The kernel
releases the lock when its process dies, however it dies; a lock file still naming a process that
is gone is taken over with a `RunDirWarning` naming it. Readers (sample, evaluate, `--resume A
--run-dir B` reading A) take no lock: checkpoints are renamed into place whole, and a reader that
meets one pruned or half-written falls back to the previous one (`checkpoint.load_run_checkpoint`).

`check_fresh(run_dir)` refuses a directory that already holds a run's files (checkpoints,
metrics, config, summary), so a new run can neither prune another's checkpoints nor reset its
metrics.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_NAME = ".lock"
RUN_FILES = ("config.toml", "metrics.csv", "summary.json")


class RunDirError(ValueError):
    """A run directory that cannot be used: held by another process, another run's, or not a directory."""


class RunDirWarning(UserWarning):
    """A stale lock of a process that is gone was taken over."""


def check_is_dir(run_dir) -> Path:
    """run_dir as a Path, or RunDirError if something that is not a directory is in its way."""
    run_dir = Path(run_dir)
    for p in (run_dir, *run_dir.parents):
        if p.exists() and not p.is_dir():
            raise RunDirError(f"run directory {run_dir}: {p} is a file, not a directory")
    return run_dir


def run_files(run_dir) -> list[str]:
    """Names in run_dir that belong to a run: checkpoints (with or without a sidecar), config.toml,
    metrics.csv and summary.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(n for n in os.listdir(run_dir) if n in RUN_FILES or n.startswith("ckpt_"))


def check_fresh(run_dir) -> None:
    """RunDirError if run_dir holds another run's files: a fresh run must not write among them."""
    found = run_files(run_dir)
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise RunDirError(f"--run-dir {run_dir} already holds a run ({shown}): continue it with --resume "
                          f"{run_dir}, or choose another directory")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


class RunLock:
    """The exclusive lock on a run directory (module docstring); a context manager.

    `acquire` creates the directory if needed, takes the lock without waiting, and records this
    process in the lock file; RunDirError naming the holder if another process has it. `release`
    empties the file and unlocks (the file stays: removing it would let two processes lock two
    different files of the same name).
    """

    def __init__(self, run_dir, command: str = ""):
        self.run_dir = check_is_dir(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunDirError(f"run directory {self.run_dir} is in use by another run: "
                              f"{_describe(holder) if holder else 'a process that has not recorded itself yet'} "
                              f"holds {self.path}; wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        stale = self._read(fd)
        if stale:
            pid = stale.get("pid")
            dead = stale.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)
            gone = "that process is no longer running" if dead else "it no longer holds the lock"
            warnings.warn(f"took over the stale lock {self.path} of {_describe(stale)}: {gone}", RunDirWarning,
                          stacklevel=2)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or full file system: the kernel still drops the lock below
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            holder = json.loads(text) if text else {}
        except (OSError, ValueError):
            return {"host": "?", "pid": "?", "started": "?"}
        return holder if isinstance(holder, dict) else {}

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
