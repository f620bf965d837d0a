"""Checkpoints: exact round trip, sha256sum-compatible checksums, corruption and interrupted writes
detected, keep-last-K pruning."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from scoresde.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                 save_checkpoint)


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
