"""Atomic, verified checkpoints: write to a temporary file, fsync, rename; keep the last k.

A checkpoint is one ``torch.save`` file holding a dict; the SHA-256 of its bytes is written
beside it (``NAME.sha256``, one hex digest a line, ``sha256sum`` format accepted) so
truncation or corruption is detected on load.

Crash safety. Every file is written to ``.NAME.tmp-PID`` in the same folder, fsynced, then
renamed over ``NAME`` (and the folder fsynced), so ``NAME`` is always either the old or the new
complete file. A checkpoint and its checksum are committed so that, whenever the process dies,
the checksum file verifies the checkpoint beside it: the checksum is committed first, listing
the new digest together with the digest(s) of the file being replaced, then the checkpoint
is renamed in, then the old digests are dropped. A full disk or an interruption while saving
therefore leaves the previous checkpoint and its checksum intact. A state holding NaN or Inf
floats is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vsekit.errors import VsekitError

STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")
CHECKSUM_SUFFIX = ".sha256"
_TEMP_PATTERN = re.compile(r"^\..+\.tmp-\d+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_MAX_CHECKSUM_BYTES = 4096  # a checksum file is a few digests; anything longer is damage
log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name (a failed ``write`` names no file), same type."""
    if exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, str(path))
    return exc


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Delete ``tmp`` when the block fails; an OS error is re-raised naming ``path``."""
    try:
        yield
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a fsynced temporary file beside ``path``; nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _removed_on_failure(tmp, path), open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    """Rename the temporary file ``tmp`` over ``path`` (atomic: done or not at all)."""
    with _removed_on_failure(tmp, path):
        os.replace(tmp, path)


def _sync_folder(path: Path) -> None:
    """Make the renames into ``path``'s folder durable."""
    try:
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _named(exc, path) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    On any failure before the rename (full disk, permissions, Ctrl-C) ``path`` keeps its
    previous content and no temporary file is left; an ``OSError`` names ``path``.
    """
    _replace(_write_temp(path, data), path)
    _sync_folder(path)


def checksum_path(path: Path) -> Path:
    """The checksum file of checkpoint ``path`` (``NAME.sha256``)."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def read_digests(path: Path) -> set[str]:
    """The SHA-256 hex digests listed in checksum file ``path`` (first word of each line)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(_MAX_CHECKSUM_BYTES).decode("ascii", errors="replace")
    except FileNotFoundError:
        return set()
    words = (line.split()[0].lower() for line in text.splitlines() if line.strip())
    return {word for word in words if _DIGEST.match(word)}


def _tensors(value: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every tensor inside nested dicts / lists / tuples."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """Name of the first floating tensor of ``state`` holding NaN or ±Inf, else None."""
    for name, tensor in _tensors(state, ""):
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
                torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialise ``state`` and commit it with its checksum to ``path`` (see the module doc).

    Raises :class:`VsekitError` (writing nothing) when a floating tensor of ``state`` holds NaN
    or Inf, and ``OSError`` naming the file when the disk refuses the write (the previous
    checkpoint at ``path``, if any, stays valid).
    """
    bad = first_nonfinite(state)
    if bad is not None:
        raise VsekitError(f"not writing checkpoint {str(path)!r}: {bad} holds NaN or Inf "
                          "values; the previous checkpoints are kept; lower train.lr or check "
                          "the inputs for NaN")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = checksum_path(path)
    old_checksums = sidecar.read_bytes()[:_MAX_CHECKSUM_BYTES] if sidecar.is_file() else None
    replaced = sorted(read_digests(sidecar) - {digest}) if path.exists() else []
    tmp = _write_temp(path, data)
    checksum_written = False
    try:
        # While the new file is renamed in, the checksum file verifies the old one and the new.
        _replace(_write_temp(sidecar, "".join(f"{d}\n" for d in (digest, *replaced)).encode()),
                 sidecar)
        checksum_written = True
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if checksum_written:
            _restore(sidecar, old_checksums)
        raise
    _sync_folder(path)
    if replaced:
        atomic_write_bytes(sidecar, f"{digest}\n".encode())


def _restore(sidecar: Path, content: bytes | None) -> None:
    """Best effort: put back the checksum file of a save that failed (None: there was none);
    if that fails too, the file written still verifies the untouched checkpoint."""
    try:
        if content is None:
            sidecar.unlink(missing_ok=True)
        else:
            atomic_write_bytes(sidecar, content)
    except OSError:
        pass


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, verifying its checksum; one-line VsekitError if it is damaged.

    A checkpoint without a checksum file is read unverified (``torch.load`` must succeed).
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise VsekitError(f"checkpoint {str(path)!r} not found") from None
    except OSError as exc:
        raise VsekitError(f"checkpoint {str(path)!r} cannot be read ({exc.strerror or exc}); "
                          "check the disk and the file's permissions") from None
    sidecar = checksum_path(path)
    if sidecar.is_file() and hashlib.sha256(data).hexdigest() not in read_digests(sidecar):
        raise VsekitError(f"checkpoint {str(path)!r} ({len(data)} bytes) is corrupted or "
                          f"truncated: its SHA-256 does not match {sidecar.name}; restore it "
                          "or use another checkpoint")
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


def remove_stale_files(folder: Path) -> None:
    """Delete what killed writers leave in a checkpoint folder (one writer, between saves):
    temporary files and checksum files without their checkpoint."""
    for path in folder.iterdir():
        orphan = (path.name.endswith(CHECKSUM_SUFFIX)
                  and not path.with_name(path.name.removesuffix(CHECKSUM_SUFFIX)).exists())
        if _TEMP_PATTERN.match(path.name) or orphan:
            path.unlink(missing_ok=True)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (and their checksums).

    The checkpoint written last is never deleted, even when damaged checkpoints of later steps
    (skipped by a resume) are still in the folder. Leftovers of killed writers are removed.
    """
    paths = step_checkpoints(folder)
    if not paths:
        return
    written_last = max(paths, key=lambda p: p.stat().st_mtime_ns)
    for path in paths[:-keep]:
        if path != written_last:
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
    remove_stale_files(folder)


def latest_good_checkpoint(folder: Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict[str, Any]]:
    """The newest step checkpoint that loads cleanly; falls back past damaged ones, logging a
    warning for each one skipped."""
    problems = []
    for path in reversed(step_checkpoints(folder)):
        try:
            state = load_checkpoint(path, map_location)
        except VsekitError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            log.warning("warning: %s; using %s instead", problem, path.name)
        return path, state
    if problems:
        raise VsekitError(f"no readable checkpoint in {str(folder)!r}: {problems[0]}")
    raise VsekitError(f"no checkpoint found in {str(folder)!r}; is this a vsekit run directory?")
