"""Atomic, checksummed checkpoints: `ckpt_<step>.pt` plus a `sha256sum`-format sidecar.

A checkpoint is a plain `torch.save` file (loadable with `torch.load(..., weights_only=True)`),
created with the same permissions as any other output (0666 less the umask). A write is journaled:
a marker `.ckpt_<step>.pt.writing` is made durable first, then the bytes go to a temporary file
`.ckpt_<step>.pt.<pid>.<random>.tmp` that is fsynced and renamed into place (`os.replace`, atomic
on POSIX), then the SHA-256 goes beside it the same way (`ckpt_<step>.pt.sha256`, `sha256sum -c`
verifies it), and only then is the marker removed. Pruning to `keep_last` removes a checkpoint
before its sidecar, so an interrupted prune leaves a sidecar without bytes, never bytes without a
sidecar.

Guarantees a run relies on after a crash (SIGKILL, power loss) at any moment:
* a complete checkpoint (file + sidecar) is never half-written: the bytes are renamed into place
  before the checksum that vouches for them exists;
* `recover` (called by the run that owns the directory, under its lock) removes only what is
  provably an interrupted write of that run: the temporary files and the checkpoint a marker names.
  A checkpoint without a sidecar and without a marker (a run copied without its `.sha256` files) is
  loaded to verify it and re-summed, or, if it does not load, moved to `damaged/`, each with a
  `CheckpointWarning` naming it; it is never deleted;
* `load_run_checkpoint` is the one way a run's checkpoint is chosen (train --resume, sample,
  evaluate): for a directory, the newest checkpoint whose bytes verify and whose content is a
  training checkpoint with finite weights; every newer one that is truncated, corrupted,
  unreadable (permissions), mid-write, without a config or model, or holding NaN weights is skipped
  with a `CheckpointWarning` naming it and why;
* `set_aside_newer` moves checkpoints of steps a resumed run redoes out of the way (superseded/), so
  that they are neither pruned in place of new ones nor resumed from.

`config_differences` and `state_differences` say, in config terms, why a checkpoint does not fit
the model a config builds (e.g. "model.ch: checkpoint 32, config 64").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import warnings
from pathlib import Path

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_MARKER = re.compile(r"^\.(ckpt_\d+\.pt)\.writing$")
_TEMP = re.compile(r"^\.(ckpt_\d+\.pt)(?:\.sha256)?\.\d+\.[0-9a-f]+\.tmp$")
RUN_FORMAT = "scoresde-train-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted, or does not fit the config it is given to."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped, set aside or re-summed; the message names it and says why."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.writing")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes a rename or a new name in the directory durable
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write data to path through a fsynced temporary file and a rename; mode 0666 less the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `ckpt_<step>.pt` file in directory, with or without a sidecar, by step."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / m.group(0)) for m in map(_NAME.match, os.listdir(directory)) if m]
    return sorted(p for p in found if p[1].is_file())


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints (with a checksum sidecar) in directory, by step."""
    return [(s, p) for s, p in _checkpoints(Path(directory)) if _sidecar(p).is_file()]


def latest_checkpoint(directory) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, directory, step: int, keep_last: int | None = None) -> Path:
    """Write state as `directory/ckpt_<step>.pt` atomically with its checksum; prune to keep_last.

    If the write fails (a full disk, a signal) nothing of it stays and the exception propagates;
    the older checkpoints are untouched.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last} is not allowed: it must be >= 1 (or None to keep all)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = directory / f"ckpt_{step:08d}.pt"
    sidecar, marker = _sidecar(path), _marker(path)
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o666))
    _fsync_dir(directory)  # the marker exists before any byte of the checkpoint does
    try:
        sidecar.unlink(missing_ok=True)  # never leave an old checksum beside new bytes
        _atomic_write(path, data)
        _atomic_write(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    except BaseException:
        with contextlib.suppress(OSError):  # else `recover` finds the marker and finishes this
            if not sidecar.is_file():
                path.unlink(missing_ok=True)
            marker.unlink()
        raise
    marker.unlink()
    if keep_last is not None:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)  # bytes first: an interrupted prune leaves only a sidecar
            _sidecar(old).unlink(missing_ok=True)
    return path


def recover(directory) -> list[Path]:
    """Finish what interrupted checkpoint writes and prunes left in directory; returns what it removed.

    Removed: a checkpoint a write marker names that has no sidecar (its write was cut short), the
    temporary files of marked writes, the markers, and sidecars whose checkpoint is gone (an
    interrupted prune). A checkpoint with no sidecar and no marker is not this module's leftover: it
    is loaded (weights_only) and, if that works, re-summed; otherwise moved to `damaged/`; either
    way with a CheckpointWarning naming it. Call it only from the process that owns the directory
    (the training run holding its lock), before it writes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    names = os.listdir(directory)
    for marker in (directory / n for n in names if _MARKER.match(n)):
        ckpt = directory / _MARKER.match(marker.name).group(1)
        leftovers = [directory / n for n in names if (m := _TEMP.match(n)) and m.group(1) == ckpt.name]
        if ckpt.is_file() and not _sidecar(ckpt).is_file():
            leftovers.append(ckpt)
        for p in leftovers:
            p.unlink(missing_ok=True)
            removed.append(p)
        marker.unlink(missing_ok=True)
    for n in names:
        if n.endswith(".pt.sha256") and _NAME.match(n[:-7]) and not (directory / n[:-7]).exists():
            (directory / n).unlink(missing_ok=True)
            removed.append(directory / n)
    for step, path in _checkpoints(directory):
        if _sidecar(path).is_file():
            continue
        try:
            data = _read(path)
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever torch raises, the file is not a checkpoint
            aside = directory / "damaged"
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)
            warnings.warn(f"{path} has no checksum file and does not load ({_first_line(e)}); moved it "
                          f"to {aside / path.name}", CheckpointWarning, stacklevel=2)
            continue
        _atomic_write(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
        warnings.warn(f"{path} had no checksum file (copied without its .sha256?); it loads, so its SHA-256 "
                      f"was written beside it", CheckpointWarning, stacklevel=2)
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
    for s, p in _checkpoints(directory):
        if s > step:
            aside = directory / "superseded"
            aside.mkdir(exist_ok=True)
            for f in (p, _sidecar(p)):
                if f.is_file():
                    os.replace(f, aside / f.name)
            moved.append(aside / p.name)
    return moved


# -- reading ----------------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:  # permissions, a directory in its place, removed meanwhile by a prune
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None


def _load_verified(path: Path, map_location) -> dict:
    """The state in path after checking its bytes against the sidecar; without a sidecar (and no
    write in progress) the file is loaded unverified, with a CheckpointWarning."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    sidecar = _sidecar(path)
    if sidecar.is_file():
        recorded = _read(sidecar).decode("ascii", "replace").split()
        if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
            raise CheckpointError(f"{path}: its checksum file {sidecar.name} is damaged (no SHA-256 in it)")
        data = _read(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded[0]:
            raise CheckpointError(f"{path} is corrupted or truncated ({len(data)} bytes): SHA-256 {actual[:12]}... "
                                  f"does not match the recorded {recorded[0][:12]}...")
    elif _marker(path).exists():
        raise CheckpointError(f"{path} has no checksum file {sidecar.name} yet: it is being written, or its "
                              "write was interrupted")
    else:
        data = _read(path)
        warnings.warn(f"{path} has no checksum file {sidecar.name}; loading it unverified (a resumed run "
                      "re-sums it)", CheckpointWarning, stacklevel=3)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - bytes torch cannot read: truncated, or written by something else
        raise CheckpointError(f"{path} is not a readable checkpoint: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    """`Type: first line of the message` (torch's unpickling errors run to a page of advice)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def check_run_state(state) -> None:
    """CheckpointError unless state is a scoresde training checkpoint (its format, a step, a config,
    model and EMA weights) whose floating-point weights are all finite."""
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"not a scoresde training checkpoint (format {got!r}, expected {RUN_FORMAT!r})")
    for key, kind in (("step", int), ("config", dict), ("model", dict), ("ema", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"the training checkpoint has no {key!r} ({kind.__name__}) in it")
    if not isinstance(state["ema"].get("module"), dict):
        raise CheckpointError("the training checkpoint's 'ema' has no 'module' weights in it")
    for where, weights in (("model", state["model"]), ("ema", state["ema"]["module"])):
        bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"its {where} weights are not finite (NaN or inf) in {', '.join(bad[:3])}"
                                  + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))


def _load_checked(path: Path, map_location, check) -> dict:
    state = _load_verified(path, map_location)
    if check is not None:
        try:
            check(state)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    return state


def load_latest(directory, map_location="cpu", check=None) -> tuple[Path, dict]:
    """(path, state) of the newest checkpoint in directory that verifies and passes `check(state)`.

    Every newer one that does not (truncated, corrupted, unreadable, mid-write, or refused by
    check) is skipped with a CheckpointWarning naming it, why, and the one tried next;
    CheckpointError listing each if none is left.
    """
    directory = Path(directory)
    found = [p for _, p in reversed(_checkpoints(directory))]
    if not found:
        raise CheckpointError(f"no checkpoint (ckpt_*.pt) in {directory}")
    bad: list[str] = []
    for i, path in enumerate(found):
        try:
            return path, _load_checked(path, map_location, check)
        except CheckpointError as e:
            bad.append(str(e))
            later = f"trying the previous one, {found[i + 1].name}" if i + 1 < len(found) else "no older checkpoint"
            warnings.warn(f"skipping checkpoint {path}: {e}; {later}", CheckpointWarning, stacklevel=2)
    raise CheckpointError(f"no checkpoint in {directory} could be loaded: " + "; ".join(bad))


def load_checkpoint(path, map_location="cpu", check=None) -> dict:
    """Load a checkpoint after verifying its SHA-256 (and `check(state)`, when given).

    A directory means its newest checkpoint that verifies (`load_latest`: a damaged newer one is
    skipped with a warning); a file must verify itself, else CheckpointError.
    """
    return load_run_checkpoint(path, map_location, check)[1]


def load_run_checkpoint(path, map_location="cpu", check=check_run_state) -> tuple[Path, dict]:
    """(path, state) of the training checkpoint that `path` names: a `ckpt_*.pt` file, which must
    verify, or a run directory, whose newest good checkpoint is taken (`load_latest`, falling back
    past damaged ones with a warning each). The one selection used by train --resume, sample,
    evaluate and loading."""
    path = Path(path)
    if path.is_dir():
        return load_latest(path, map_location, check)
    return path, _load_checked(path, map_location, check)


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


def uncompiled(state: dict) -> dict:
    """`state` with torch.compile's wrapper segment `_orig_mod` dropped from every key: a compiled
    module's state dict holds the same tensors as the plain module's under `_orig_mod.<name>`
    (`net._orig_mod.<name>` where a submodule was compiled), so either loads into a plain module."""
    return {".".join(part for part in k.split(".") if part != "_orig_mod"): v for k, v in state.items()}


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
