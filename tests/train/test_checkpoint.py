"""Atomic checkpoints: round trip, checksum, corruption detection, pruning, fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsekit.errors import VsekitError
from vsekit.train import checkpoint as ckpt


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value)}


def test_round_trip_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "step-1.pt"
    ckpt.save_checkpoint(_state(1.0), path)
    assert path.with_name("step-1.pt.sha256").is_file()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damage_is_detected(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "step-1.pt"
    ckpt.save_checkpoint(_state(1.0), path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VsekitError, match="step-1.pt.*corrupted"):
        ckpt.load_checkpoint(path)


def test_unreadable_without_checksum(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(VsekitError, match="cannot be read"):
        ckpt.load_checkpoint(path)


def test_prune_and_fallback_to_previous_good(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10):
        ckpt.save_checkpoint(_state(float(step)), tmp_path / f"step-{step}.pt")
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-3.pt", "step-10.pt"]
    (tmp_path / "step-10.pt").write_bytes(b"garbage")
    path, state = ckpt.latest_good_checkpoint(tmp_path)
    assert path.name == "step-3.pt" and state["step"] == 3


def test_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(VsekitError, match="no checkpoint found"):
        ckpt.latest_good_checkpoint(tmp_path)


def test_failed_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "step-1.pt"
    ckpt.save_checkpoint(_state(1.0), path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full_disk)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".*tmp*"))
