"""Atomic, checksummed checkpoints: `ckpt_<step>.pt` plus a `sha256sum`-format sidecar.

A checkpoint is a plain `torch.save` file (loadable with `torch.load(..., weights_only=True)`).
It is written to a temporary file in the same directory, fsynced, and renamed into place
(`os.replace`, atomic on POSIX); its SHA-256 is then written the same way to `ckpt_<step>.pt.sha256`
(`sha256sum -c` verifies it). A checkpoint without its sidecar is an interrupted write and is
ignored; one whose bytes do not match is refused. Only the newest `keep_last` are kept.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupted."""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints (with a checksum sidecar) in directory, by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.with_name(p.name + ".sha256").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, directory, step: int, keep_last: int | None = None) -> Path:
    """Write state as `directory/ckpt_<step>.pt` atomically with its checksum; prune to keep_last."""
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last} is not allowed: it must be >= 1 (or None to keep all)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = directory / f"ckpt_{step:08d}.pt"
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink(missing_ok=True)  # never leave an old checksum beside new bytes
    _atomic_write(path, data)
    _atomic_write(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    if keep_last is not None:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint after verifying its SHA-256; a directory means its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint (ckpt_*.pt with its .sha256) in {path}")
        path = latest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise CheckpointError(f"{path} has no checksum file {sidecar.name}: the write was interrupted")
    expected = sidecar.read_text().split()[0]
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{path} is corrupted: SHA-256 {actual[:12]}... does not match "
                              f"the recorded {expected[:12]}...")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
