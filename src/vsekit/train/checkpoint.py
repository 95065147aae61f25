"""Atomic, verified checkpoints: write to a temporary file, fsync, rename; keep the last k.

A checkpoint is one ``torch.save`` file holding a dict; a SHA-256 of its bytes is written
beside it (``NAME.sha256``) so truncation or corruption is detected on load.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from vsekit.errors import VsekitError

STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialise ``state`` and write it, with its checksum, atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"),
                       hashlib.sha256(data).hexdigest().encode())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, verifying its checksum; one-line VsekitError if it is damaged."""
    if not path.is_file():
        raise VsekitError(f"checkpoint {str(path)!r} not found")
    data = path.read_bytes()
    digest_file = path.with_name(path.name + ".sha256")
    if digest_file.is_file():
        expected = digest_file.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise VsekitError(f"checkpoint {str(path)!r} is corrupted or truncated (checksum "
                              "mismatch); resume from an earlier checkpoint")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise VsekitError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}); "
                          "it is corrupted or not a vsekit checkpoint") from None
    if not isinstance(state, dict) or "model" not in state:
        raise VsekitError(f"checkpoint {str(path)!r} is not a vsekit checkpoint")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """``module.load_state_dict(state)`` with a one-line error when they do not match."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise VsekitError(f"checkpoint {str(path)!r} does not match the model built from the "
                          f"run's config and data ({first}); was the config or the data "
                          "changed?") from None


def step_checkpoints(folder: Path) -> list[Path]:
    """``step-N.pt`` files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (and their checksums)."""
    for path in step_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def latest_good_checkpoint(folder: Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict[str, Any]]:
    """The newest step checkpoint that loads cleanly; falls back past damaged ones."""
    problems = []
    for path in reversed(step_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except VsekitError as exc:
            problems.append(str(exc))
    if problems:
        raise VsekitError(f"no readable checkpoint in {str(folder)!r}: {problems[0]}")
    raise VsekitError(f"no checkpoint found in {str(folder)!r}; is this a vsekit run directory?")
