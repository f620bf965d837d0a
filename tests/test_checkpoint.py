"""Checkpoints: exact round trip, sha256sum-compatible checksums, corruption and interrupted writes
detected, keep-last-K pruning, fallback past a damaged newest checkpoint (every damage kind,
permissions and bad content included), recovery that removes only the journaled leftovers of its
own writes (a checkpoint copied without its sidecar is re-summed or set aside, never deleted),
output file modes, and config/state differences named in the user's terms."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from scoresde.checkpoint import (CheckpointError, CheckpointWarning, check_run_state, config_differences,
                                 list_checkpoints, load_checkpoint, load_latest,
                                 load_run_checkpoint, recover, save_checkpoint, set_aside_newer,
                                 state_differences)


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(5, 3, generator=g), "step": seed, "nested": {"rng": g.get_state(), "t": (1, 2.5, None)}}


def test_roundtrip_is_exact_and_checksum_is_sha256sum_format(tmp_path):
    s = state(3)
    path = save_checkpoint(s, tmp_path, 3)
    assert path.name == "ckpt_00000003.pt"
    line = (tmp_path / "ckpt_00000003.pt.sha256").read_text()
    assert line == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ckpt_00000003.pt\n"
    back = load_checkpoint(path)
    assert torch.equal(back["w"], s["w"]) and torch.equal(back["nested"]["rng"], s["nested"]["rng"])
    assert back["nested"]["t"] == (1, 2.5, None) and back["step"] == 3
    assert torch.load(path, weights_only=True)["step"] == 3  # a plain torch.save file


def test_corruption_is_refused(tmp_path):
    path = save_checkpoint(state(), tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_missing_checksum_with_a_write_marker_means_interrupted(tmp_path):
    save_checkpoint(state(1), tmp_path, 1)
    p2 = save_checkpoint(state(2), tmp_path, 2)
    (tmp_path / (p2.name + ".sha256")).unlink()  # as if killed between the two renames:
    (tmp_path / f".{p2.name}.writing").touch()   # the write's marker is still there
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    with pytest.warns(CheckpointWarning, match="being written"):
        assert load_checkpoint(tmp_path)["step"] == 1
    with pytest.raises(CheckpointError, match="interrupted"):
        load_checkpoint(p2)


def test_missing_checksum_without_a_marker_is_loaded_unverified_with_a_warning(tmp_path):
    """A run copied without its .sha256 files: readers load it (torch verifies the zip structure)."""
    save_checkpoint(state(1), tmp_path, 1)
    p2 = save_checkpoint(state(2), tmp_path, 2)
    (tmp_path / (p2.name + ".sha256")).unlink()
    with pytest.warns(CheckpointWarning, match=r"ckpt_00000002\.pt has no checksum file.*unverified"):
        assert load_checkpoint(tmp_path)["step"] == 2
    assert (tmp_path / "ckpt_00000002.pt").is_file() and not (tmp_path / "ckpt_00000002.pt.sha256").exists()


def test_failed_write_leaves_previous_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    save_checkpoint(state(1), tmp_path, 1)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state(2), tmp_path, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt", "ckpt_00000001.pt.sha256"]
    assert load_checkpoint(tmp_path)["step"] == 1


def test_keep_last_prunes_oldest(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(state(step), tmp_path, step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert len(list(tmp_path.iterdir())) == 4
    with pytest.raises(ValueError, match="keep_last=0"):
        save_checkpoint(state(), tmp_path, 50, keep_last=0)


def test_empty_directory(tmp_path):
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty sidecar", "garbage sidecar"])
def test_damaged_latest_falls_back_with_a_warning_naming_it(tmp_path, damage):
    for step in (1, 2, 3):
        save_checkpoint(state(step), tmp_path, step)
    bad = tmp_path / "ckpt_00000003.pt"
    sidecar = tmp_path / "ckpt_00000003.pt.sha256"
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[:-1])
    elif damage == "flip":
        bad.write_bytes(data[:-5] + bytes([data[-5] ^ 0x10]) + data[-4:])
    elif damage == "empty sidecar":
        sidecar.write_text("")
    else:
        sidecar.write_text("not a checksum\n")
    with pytest.warns(CheckpointWarning, match=r"skipping checkpoint .*ckpt_00000003\.pt: .*previous one, "
                                               r"ckpt_00000002\.pt"):
        path, back = load_latest(tmp_path)
    assert path.name == "ckpt_00000002.pt" and torch.equal(back["w"], state(2)["w"])
    with pytest.warns(CheckpointWarning):
        assert load_checkpoint(tmp_path)["step"] == 2
    with pytest.raises(CheckpointError, match="ckpt_00000003.pt"):  # a file named explicitly must verify
        load_checkpoint(bad)


def test_no_loadable_checkpoint_is_an_error_listing_each(tmp_path):
    for step in (1, 2):
        p = save_checkpoint(state(step), tmp_path, step)
        p.write_bytes(p.read_bytes()[:10])
    with pytest.warns(CheckpointWarning), \
            pytest.raises(CheckpointError, match=r"could be loaded: .*ckpt_00000002.*truncated.*ckpt_00000001"):
        load_checkpoint(tmp_path)


def test_recover_removes_only_the_journaled_leftovers_of_its_own_writes(tmp_path):
    save_checkpoint(state(1), tmp_path, 1)
    p2 = save_checkpoint(state(2), tmp_path, 2)
    (tmp_path / (p2.name + ".sha256")).unlink()          # killed between the two renames
    (tmp_path / f".{p2.name}.writing").touch()
    (tmp_path / ".ckpt_00000003.pt.writing").touch()      # killed mid-write of step 3
    (tmp_path / ".ckpt_00000003.pt.4242.0a1b2c3d.tmp").write_bytes(b"partial")
    (tmp_path / "ckpt_00000000.pt.sha256").write_text("x\n")  # a prune cut short: only the sidecar left
    (tmp_path / "metrics.csv").write_text("step\n")
    removed = recover(tmp_path)
    assert sorted(p.name for p in removed) == [".ckpt_00000003.pt.4242.0a1b2c3d.tmp", "ckpt_00000000.pt.sha256",
                                               "ckpt_00000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt", "ckpt_00000001.pt.sha256",
                                                          "metrics.csv"]


def test_recover_never_deletes_a_checkpoint_without_sidecar(tmp_path):
    """No marker: not a leftover of this module. One that loads is re-summed (and then verifies as
    sha256sum would), one that does not is moved to damaged/; each with a warning naming it."""
    for step in (280, 290, 300):
        save_checkpoint(state(step), tmp_path, step)
    for p in tmp_path.glob("*.sha256"):
        p.unlink()                                        # copied without the sidecars
    bad = tmp_path / "ckpt_00000310.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointWarning) as record:
        assert recover(tmp_path) == []
    messages = " ".join(str(w.message) for w in record)
    for step in (280, 290, 300):
        assert f"ckpt_00000{step}.pt had no checksum file" in messages
    assert "ckpt_00000310.pt has no checksum file and does not load" in messages
    assert [s for s, _ in list_checkpoints(tmp_path)] == [280, 290, 300]
    for step in (280, 290, 300):
        data = (tmp_path / f"ckpt_00000{step}.pt").read_bytes()
        assert (tmp_path / f"ckpt_00000{step}.pt.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "damaged" / bad.name).read_bytes() == b"not a checkpoint"


def test_checkpoint_files_have_the_mode_of_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(state(), tmp_path, 1)
        other = tmp_path / "metrics.csv"
        other.write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777
    assert mode(path) == mode(path.with_name(path.name + ".sha256")) == mode(other) == 0o644


def test_failed_sidecar_write_leaves_nothing_of_the_new_checkpoint(tmp_path, monkeypatch):
    """ENOSPC after the bytes were renamed into place: the new checkpoint and its marker go, the old stays."""
    save_checkpoint(state(1), tmp_path, 1)
    real = os.fsync
    calls = []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 4:  # marker dir, ckpt file, ckpt dir, then the sidecar's file
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(state(2), tmp_path, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt", "ckpt_00000001.pt.sha256"]


def _run_state(seed=0, **change):
    s = {"format": "scoresde-train-1", "step": seed, "config": {"name": "x"}, "model": {"w": torch.ones(2)},
         "ema": {"decay": 0.9, "num_updates": 1, "module": {"w": torch.ones(2)}}}
    s.update(change)
    return s


def _unreadable(path, monkeypatch):
    """chmod 0, and (as root, who reads whatever the mode) reading it raises what chmod 0 gives others."""
    path.chmod(0)
    if os.geteuid() == 0:
        real = Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)


def _damage(kind, path, monkeypatch):
    sidecar = path.with_name(path.name + ".sha256")
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "one bit flipped":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "sidecar emptied":
        sidecar.write_text("")
    elif kind == "sidecar garbage":
        sidecar.write_text("zz not a sum\n")
    elif kind == "mid-write":
        sidecar.unlink()
        path.with_name(f".{path.name}.writing").touch()
    elif kind == "unreadable":
        _unreadable(path, monkeypatch)
    elif kind == "sidecar unreadable":
        _unreadable(sidecar, monkeypatch)
    elif kind in ("no config", "no model", "NaN weights", "inf EMA", "not a training checkpoint"):
        bad = {"no config": _run_state(3, config=None), "no model": {k: v for k, v in _run_state(3).items()
                                                                     if k != "model"},
               "NaN weights": _run_state(3, model={"w": torch.tensor([1.0, float("nan")])}),
               "inf EMA": _run_state(3, ema={"decay": 0.9, "num_updates": 1, "module": {"w": torch.full((2,), float("inf"))}}),
               "not a training checkpoint": {"w": torch.ones(2)}}[kind]
        save_checkpoint(bad, path.parent, 3)  # a valid checksum over bad content
    else:
        raise AssertionError(kind)


DAMAGE = ["truncated", "one bit flipped", "empty", "sidecar emptied", "sidecar garbage", "mid-write", "unreadable",
          "sidecar unreadable", "no config", "no model", "NaN weights", "inf EMA",
          "not a training checkpoint"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_run_checkpoint_selection_falls_back_past_every_damage_kind(tmp_path, kind, monkeypatch):
    for step in (1, 2, 3):
        save_checkpoint(_run_state(step), tmp_path, step)
    newest = tmp_path / "ckpt_00000003.pt"
    _damage(kind, newest, monkeypatch)
    with pytest.warns(CheckpointWarning, match=r"skipping checkpoint .*ckpt_00000003\.pt: .*previous one, "
                                               r"ckpt_00000002\.pt"):
        path, back = load_run_checkpoint(tmp_path)
    assert path.name == "ckpt_00000002.pt" and back["step"] == 2
    with pytest.raises(CheckpointError, match="ckpt_00000003.pt") as err:  # named explicitly: it must be good
        load_run_checkpoint(newest)
    assert "\n" not in str(err.value)


def test_check_run_state_names_what_is_wrong():
    check_run_state(_run_state())
    for change, match in [({"config": None}, "no 'config'"), ({"step": "3"}, "no 'step'"),
                          ({"format": "other"}, "not a scoresde training checkpoint"),
                          ({"ema": {"module": None}}, "'ema' has no 'module'"),
                          ({"model": {"a.w": torch.tensor([float("nan")])}}, r"model weights are not finite .* a\.w")]:
        with pytest.raises(CheckpointError, match=match):
            check_run_state(_run_state(**change))


def test_differences_are_named_in_config_terms():
    saved = {"data": {"name": "digits", "root": "a"}, "model": {"name": "unet", "ch": 32},
             "sde": {"name": "vp", "beta_max": 20.0}, "train": {"lr": 1e-3}}
    now = {"data": {"name": "digits", "root": "b"}, "model": {"name": "unet", "ch": 64, "dropout": 0.1},
           "sde": {"name": "vp", "beta_max": 20.0}, "train": {"lr": 2e-3}}
    assert config_differences(saved, now) == ["model.ch: checkpoint 32, config 64",
                                              "model.dropout: checkpoint '(unset)', config 0.1"]
    a = {"w": torch.zeros(32, 3), "b": torch.zeros(32), "old": torch.zeros(1)}
    b = {"w": torch.zeros(64, 3), "b": torch.zeros(32), "new": torch.zeros(1)}
    assert state_differences(a, a) == []
    assert state_differences(a, b) == ["new is missing from the checkpoint", "old is in the checkpoint but not "
                                       "in the model", "w: checkpoint (32, 3), model (64, 3)"]


def test_set_aside_newer_moves_later_steps_out_of_pruning_and_resume(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(state(step), tmp_path, step)
    moved = set_aside_newer(tmp_path, 10)   # a run continued from step 10
    assert [p.name for p in moved] == ["ckpt_00000020.pt", "ckpt_00000030.pt"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert load_checkpoint(tmp_path / "superseded" / "ckpt_00000030.pt")["step"] == 30  # kept, verifiable
    # the continued run's new checkpoints are the newest: keep-last keeps them
    for step in (12, 14):
        save_checkpoint(state(step), tmp_path, step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [12, 14]
