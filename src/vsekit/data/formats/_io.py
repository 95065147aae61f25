"""File helpers shared by the dataset formats: checked paths, text and JSON reading with
line numbers in errors, float arrays with NaN/Inf checks, split-name selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.data.images import image_format
from vsekit.errors import VsekitError, require

_CHUNK_BYTES = 1 << 26
STANDARD_SPLITS = ("train", "dev", "test")
_UTF8_BOM = b"\xef\xbb\xbf"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive


def require_root(root: str | None, what: str) -> Path:
    """The existing folder ``root``; ``what`` describes what it must hold (for the message)."""
    path = Path(str(root)).expanduser()
    require(path.is_dir(), f"data root {str(path)!r} is not a folder; set data.root to {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else an error naming it and ``what`` it should contain."""
    require(path.is_file(), f"{path} not found: expected {what} there")
    return path


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); invalid bytes name their line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VsekitError(f"cannot read {path} ({exc.strerror}); check the path and its "
                          "permissions") from None
    data = data.removeprefix(_UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise VsekitError(f"{path} line {line} is not valid UTF-8; re-save the file as "
                          "UTF-8") from None


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (no line endings; a final newline adds no line)."""
    lines = read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_nonblank_lines(path: Path, what: str) -> list[str]:
    """Stripped lines of ``path``, each holding ``what``; a blank line is an error naming it."""
    lines = [line.strip() for line in read_lines(path)]
    for number, line in enumerate(lines, start=1):
        require(line != "", f"{path} line {number} is blank, expected {what}; write it there or "
                            "delete the line")
    return lines


def read_head(path: Path, size: int, name: str, fix: str) -> bytes:
    """The first ``size`` bytes of ``path``; an unreadable file → one line naming it and the fix."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise VsekitError(f"cannot read {name} ({exc.strerror}); {fix}") from None


def load_float_array(path: Path, ndims: tuple[int, ...]) -> np.ndarray:
    """Memory-map a float ``.npy`` array of rank in ``ndims``; corrupt files name the fix."""
    head = read_head(path, 8, str(path), "check the path and its permissions")
    if not head.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        what = "is empty" if not head else f"starts with {head!r}"
        raise VsekitError(f"{path} is not a .npy file (it {what}); save the array with "
                          "numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VsekitError(f"{path} is not a readable .npy file ({reason}); it may be truncated "
                          "or corrupt: re-save it with numpy.save") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise VsekitError(f"{path} is an .npz archive, not a single array; save one array "
                          "with numpy.save")
    ranks = " or ".join(f"{n}-d" for n in ndims)
    require(array.ndim in ndims, f"{path} holds a {array.ndim}-d array of shape {array.shape}, "
                                 f"expected {ranks}; re-export it with that shape")
    require(np.issubdtype(array.dtype, np.floating),
            f"{path} holds {array.dtype} values, expected floats; convert it with "
            "array.astype(numpy.float32) and save it again")
    return array


def first_nonfinite_row(array: np.ndarray, chunk_bytes: int = _CHUNK_BYTES) -> int | None:
    """Index of the first row of ``array`` [N, ...] holding NaN or ±Inf, else None.

    Reads ``chunk_bytes`` at a time, so a memory-mapped array is never loaded whole.
    """
    if len(array) == 0:
        return None
    rows = max(1, chunk_bytes // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        block = np.asarray(array[start:start + rows])
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def require_finite(array: np.ndarray, path: Path, step: int = 1) -> None:
    """Error naming the first row with NaN or Inf of ``array``, row ``i`` of which is row
    ``i * step`` of the file at ``path``."""
    row = first_nonfinite_row(array)
    if row is not None:
        raise VsekitError(f"{path} row {row * step} holds NaN or Inf values; recompute the "
                          "features for that row")


def order_splits(names: set[str] | list[str]) -> list[str]:
    """Split names with train, dev, test first (in that order), then the rest sorted."""
    standard = [name for name in STANDARD_SPLITS if name in names]
    return standard + sorted(set(names) - set(STANDARD_SPLITS))


def check_split_names(splits: list[str] | None, where: str) -> None:
    """Validate a ``splits`` param: None (all present) or a non-empty list without repeats."""
    if splits is None:
        return
    require(len(splits) > 0, f"{where}.splits is empty; list split names such as "
                             "[train, dev, test] or leave it out to load every split present")
    require(len(set(splits)) == len(splits), f"{where}.splits names a split twice: {splits}")


def select_splits(available: list[str], requested: list[str] | None, source: str) -> list[str]:
    """The splits to load: every available one when ``requested`` is None, else ``requested``.

    An absent requested split, or no split at all, is an error naming ``source``.
    """
    require(len(available) > 0, f"no split found in {source}")
    if requested is None:
        return available
    missing = [name for name in requested if name not in available]
    if missing:
        raise VsekitError(f"split {missing[0]!r} not found in {source} (found: "
                          f"{', '.join(available)}); fix data.splits or add the split")
    return list(requested)


def read_json(path: Path) -> Any:
    """The parsed JSON of a UTF-8 file; a syntax error names its line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise VsekitError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}); fix the file or download it again") from None
    except RecursionError:
        raise VsekitError(f"{path} is nested too deeply to be a dataset file; fix the file or "
                          "download it again") from None


def require_images_exist(files: list[Path], source: str, check_format: bool = True) -> None:
    """Error naming the first missing file of ``files`` (listed in ``source``) and the count;
    with ``check_format``, also the first file that is not an image (its first bytes are no
    JPEG/PNG/GIF/BMP/TIFF/WebP signature: an HTML error page, an empty or foreign file)."""
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise VsekitError(f"{len(missing)} of {len(files)} image files listed in {source} are "
                          f"missing (first: {missing[0]}); point the image folder param at "
                          "the right place or remove their entries")
    if not check_format:
        return
    for path in files:
        head = read_head(path, 12, f"image file {path}", "check its permissions")
        if image_format(head) is None:
            what = "is empty" if not head else f"starts with {head[:8]!r}"
            raise VsekitError(f"{path} (listed in {source}) is not an image file (it {what}); "
                              "replace it with the image or remove its entries")


def require_unique(names: list[str], what: str, source: Path | str,
                   fix: str = "give each its own", step: int = 1) -> None:
    """Error naming the first value of ``names`` given twice (``what``: "image id", ...) and
    its lines in ``source``, where ``names[i]`` is on line ``i * step + 1``; ``fix`` ends the
    message."""
    first_row: dict[str, int] = {}
    for row, name in enumerate(names):
        if name in first_row:
            raise VsekitError(f"{source} gives the {what} {name!r} twice (lines "
                              f"{first_row[name] * step + 1} and {row * step + 1}); {fix}")
        first_row[name] = row
