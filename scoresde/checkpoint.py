"""Atomic, checksummed checkpoints: `ckpt_<step>.pt` plus a `sha256sum`-format sidecar.

A checkpoint is a plain `torch.save` file (loadable with `torch.load(..., weights_only=True)`).
It is written to a temporary file in the same directory, fsynced, and renamed into place
(`os.replace`, atomic on POSIX); its SHA-256 is then written the same way to `ckpt_<step>.pt.sha256`
(`sha256sum -c` verifies it). A checkpoint without its sidecar is an interrupted write and is
ignored; one whose bytes do not match is refused. Only the newest `keep_last` are kept.

Guarantees a run relies on after a crash (SIGKILL, power loss) at any moment:
* a complete checkpoint (file + sidecar) is never half-written: the bytes are renamed into place
  before the checksum that vouches for them exists;
* loading a *directory* takes the newest checkpoint whose bytes verify; a newer one that is
  corrupted or truncated is skipped with a `CheckpointWarning` naming it;
* `remove_incomplete` deletes what an interrupted write leaves behind (temporary files and
  checkpoints without a sidecar); `set_aside_newer` moves checkpoints of steps a resumed run
  redoes out of the way, so that they are neither pruned in place of new ones nor resumed from.

`config_differences` and `state_differences` say, in config terms, why a checkpoint does not fit
the model a config builds (e.g. "model.ch: checkpoint 32, config 64").
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted, or does not fit the config it is given to."""


class CheckpointWarning(UserWarning):
    """A corrupted checkpoint was skipped in favour of an older one."""


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


def remove_incomplete(directory) -> list[Path]:
    """Delete the leftovers of interrupted writes in directory: temporary `.ckpt_*.tmp` files and
    `ckpt_*.pt` files without a checksum sidecar. Returns what was removed. Call it only while no
    other process writes checkpoints there (in a distributed run: rank 0, before training)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        tmp = p.name.startswith(".ckpt_") and p.name.endswith(".tmp")
        orphan = _NAME.match(p.name) and not p.with_name(p.name + ".sha256").is_file()
        if p.is_file() and (tmp or orphan):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def set_aside_newer(directory, step: int) -> list[Path]:
    """Move the checkpoints (with their sidecars) of steps after `step` into directory/superseded/.

    A run continued from step `step` redoes the later steps; the checkpoints an earlier attempt
    wrote for them (a damaged one skipped on resume, or a future abandoned by resuming an older
    checkpoint) would otherwise count as the newest for keep-last pruning and for the next
    `--resume`. They are kept, not deleted; a file of the same name already there is replaced.
    Returns their new paths. Call it only while no other process writes checkpoints there.
    """
    directory = Path(directory)
    moved = []
    for s, p in list_checkpoints(directory):
        if s > step:
            aside = directory / "superseded"
            aside.mkdir(exist_ok=True)
            for f in (p, p.with_name(p.name + ".sha256")):
                os.replace(f, aside / f.name)
            moved.append(aside / p.name)
    return moved


def _load_verified(path: Path, map_location) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise CheckpointError(f"{path} has no checksum file {sidecar.name}: the write was interrupted")
    recorded = sidecar.read_text().split()
    if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
        raise CheckpointError(f"{path}: its checksum file {sidecar.name} is damaged (no SHA-256 in it)")
    expected = recorded[0]
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{path} is corrupted or truncated ({len(data)} bytes): SHA-256 {actual[:12]}... "
                              f"does not match the recorded {expected[:12]}...")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # verified bytes that torch cannot read: written by something else
        raise CheckpointError(f"{path} is not a readable checkpoint: {type(e).__name__}: {e}") from None


def load_latest(directory, map_location="cpu") -> tuple[Path, dict]:
    """(path, state) of the newest complete checkpoint in directory whose bytes verify.

    Newer checkpoints that are corrupted or truncated are skipped, each with a CheckpointWarning
    that names the bad file and the one used instead; CheckpointError if none verifies.
    """
    directory = Path(directory)
    found = [p for _, p in reversed(list_checkpoints(directory))]
    if not found:
        raise CheckpointError(f"no complete checkpoint (ckpt_*.pt with its .sha256) in {directory}")
    bad: list[str] = []
    for i, path in enumerate(found):
        try:
            state = _load_verified(path, map_location)
        except CheckpointError as e:
            bad.append(str(e))
            later = f"trying the previous one, {found[i + 1].name}" if i + 1 < len(found) else "no older checkpoint"
            warnings.warn(f"skipping checkpoint {path}: {e}; {later}", CheckpointWarning, stacklevel=2)
            continue
        return path, state
    raise CheckpointError(f"no checkpoint in {directory} could be loaded: " + "; ".join(bad))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint after verifying its SHA-256.

    A directory means its newest checkpoint that verifies (`load_latest`: a corrupted newer one is
    skipped with a warning); a file must verify itself, else CheckpointError.
    """
    path = Path(path)
    if path.is_dir():
        return load_latest(path, map_location)[1]
    return _load_verified(path, map_location)


# -- does a checkpoint fit a config? ------------------------------------------------------------------
def flatten(table: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict keyed by dotted paths: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict, keys=("data.name", "data.channels", "sde.", "model.")) -> list[str]:
    """'field: checkpoint A, config B' for every config field (as nested dicts, `config_to_dict`) that
    differs and starts with one of `keys` (by default what fixes the model's state: the data's
    shape, the SDE and the network)."""
    a, b = flatten(saved), flatten(current)
    out = []
    for k in sorted(a.keys() | b.keys()):
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in keys) and a.get(k) != b.get(k):
            out.append(f"{k}: checkpoint {a.get(k, '(unset)')!r}, config {b.get(k, '(unset)')!r}")
    return out


def state_differences(saved: dict, current: dict, limit: int = 4) -> list[str]:
    """Up to `limit` tensors (by name) missing from, extra in, or shaped differently in `saved`
    (a module's state_dict) against `current`; [] when the two fit each other."""
    out = []
    for k in sorted(current.keys() - saved.keys()):
        out.append(f"{k} is missing from the checkpoint")
    for k in sorted(saved.keys() - current.keys()):
        out.append(f"{k} is in the checkpoint but not in the model")
    for k in sorted(saved.keys() & current.keys()):
        a, b = saved[k], current[k]
        if torch.is_tensor(a) and torch.is_tensor(b) and a.shape != b.shape:
            out.append(f"{k}: checkpoint {tuple(a.shape)}, model {tuple(b.shape)}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
