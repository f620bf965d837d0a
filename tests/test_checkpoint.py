"""Checkpoints: exact round trip, sha256sum-compatible checksums, corruption and interrupted writes
detected, keep-last-K pruning, fallback past a damaged newest checkpoint, cleanup of interrupted
writes, and config/state differences named in the user's terms."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from scoresde.checkpoint import (CheckpointError, CheckpointWarning, config_differences, latest_checkpoint,
                                 list_checkpoints, load_checkpoint, load_latest, remove_incomplete,
                                 save_checkpoint, set_aside_newer, state_differences)


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


def test_missing_checksum_means_incomplete(tmp_path):
    save_checkpoint(state(1), tmp_path, 1)
    p2 = save_checkpoint(state(2), tmp_path, 2)
    (tmp_path / (p2.name + ".sha256")).unlink()  # as if killed between the two renames
    assert latest_checkpoint(tmp_path).name == "ckpt_00000001.pt"
    assert load_checkpoint(tmp_path)["step"] == 1
    with pytest.raises(CheckpointError, match="interrupted"):
        load_checkpoint(p2)


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
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
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


def test_remove_incomplete_deletes_only_leftovers(tmp_path):
    save_checkpoint(state(1), tmp_path, 1)
    p2 = save_checkpoint(state(2), tmp_path, 2)
    (tmp_path / (p2.name + ".sha256")).unlink()          # killed between the two renames
    (tmp_path / ".ckpt_00000003.pt.x1y2.tmp").write_bytes(b"partial")   # killed mid-write
    (tmp_path / "metrics.csv").write_text("step\n")
    removed = remove_incomplete(tmp_path)
    assert sorted(p.name for p in removed) == [".ckpt_00000003.pt.x1y2.tmp", "ckpt_00000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt", "ckpt_00000001.pt.sha256",
                                                          "metrics.csv"]


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
