"""The VSE++/SCAN precomputed layout: ``{split}_ims.npy`` + ``{split}_caps.txt`` per split.

``root`` holds, for each split (``train``, ``dev``, ``test``, ``testall``...):

- ``{split}_ims.npy``: float [N, D] pooled features or [N, R, D] region features; opened
  memory-mapped, so large files are not read into memory;
- ``{split}_caps.txt``: UTF-8, one caption per line, ``k`` consecutive captions per image,
  in image order (caption ``j`` describes image ``j // k``);
- ``{split}_ids.txt`` (optional): one image id per row of ``{split}_ims.npy``; without it
  the ids are ``"{split}-{i}"``.

The module also holds the file helpers the other loaders share (text, ``.npy``, splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.formats import DATA_FORMATS
from vsekit.errors import VsekitError, require

STANDARD_SPLITS = ("train", "dev", "test")
_UTF8_BOM = b"\xef\xbb\xbf"
_CHUNK_BYTES = 1 << 26


# ---- helpers shared by the loaders ------------------------------------------------------


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


def load_float_array(path: Path, ndims: tuple[int, ...]) -> np.ndarray:
    """Memory-map a float ``.npy`` array of rank in ``ndims``; corrupt files name the fix."""
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


# ---- the precomp format --------------------------------------------------------------------


@dataclass
class PrecompParams:
    """Params of the ``precomp`` format.

    Attributes:
        root: folder holding ``{split}_ims.npy`` and ``{split}_caps.txt``.
        splits: splits to load; None loads every split whose files are present.
        captions_per_image: k; None infers k = n_captions / n_images.
        image_stride: keep every ``image_stride``-th feature row (5 for the SCAN files that
            repeat each image row once per caption, VSE++'s ``im_div``).
        check_finite: scan the features for NaN/Inf (chunked; reads the whole file once).
    """

    root: str | None = None
    splits: list[str] | None = None
    captions_per_image: int | None = None
    image_stride: int = 1
    check_finite: bool = True

    def validate(self, where: str) -> None:
        require(self.root is not None, f"{where}.root is required: set it to the folder "
                                       "holding {split}_ims.npy and {split}_caps.txt")
        check_split_names(self.splits, where)
        require(self.captions_per_image is None or self.captions_per_image >= 1,
                f"{where}.captions_per_image must be at least 1 or null, got "
                f"{self.captions_per_image}")
        require(self.image_stride >= 1,
                f"{where}.image_stride must be at least 1, got {self.image_stride}")


def captions_per_image(n_captions: int, n_images: int, expected: int | None,
                       caps_path: Path) -> int:
    """k with ``n_captions == k * n_images``; ``expected`` (if given) must be that k."""
    if expected is None:
        require(0 < n_images <= n_captions and n_captions % n_images == 0,
                f"{caps_path} has {n_captions} captions for {n_images} images, not a whole "
                "number per image; check that the captions and features belong to the same split")
        return n_captions // n_images
    require(n_captions == expected * n_images,
            f"{caps_path} has {n_captions} captions for {n_images} images, not {expected} per "
            "image; fix data.captions_per_image or the files")
    return expected


def precomp_split_names(root: Path) -> list[str]:
    """Names of the splits with a ``{split}_ims.npy`` or ``{split}_caps.txt`` in ``root``."""
    names = {path.name.removesuffix(suffix)
             for suffix in ("_ims.npy", "_caps.txt") for path in root.glob(f"*{suffix}")}
    return order_splits(names)


def _image_ids(path: Path, n_rows: int, stride: int, split: str) -> list[str]:
    """Ids from ``path`` (one per feature row, strided like the rows), else ``split-i``."""
    if not path.is_file():
        return [f"{split}-{i}" for i in range(n_rows // stride)]
    ids = read_nonblank_lines(path, "an image id")
    require(len(ids) == n_rows, f"{path} has {len(ids)} ids for {n_rows} feature rows; write "
                                "one image id per row of the features file")
    return ids[::stride]


def load_precomp_split(root: Path, name: str, params: PrecompParams) -> RetrievalSplit:
    """One split of a precomp folder (features stay memory-mapped)."""
    ims_path = require_file(root / f"{name}_ims.npy",
                            "float image features [N, D] or [N, R, D] saved with numpy.save")
    caps_path = require_file(root / f"{name}_caps.txt", "UTF-8 captions, one per line")
    rows = load_float_array(ims_path, (2, 3))
    stride = params.image_stride
    require(len(rows) % stride == 0, f"{ims_path} has {len(rows)} rows, not a multiple of "
                                     f"data.image_stride={stride}; fix image_stride")
    features = rows[::stride]
    captions = read_nonblank_lines(caps_path, "a caption")
    k = captions_per_image(len(captions), len(features), params.captions_per_image, caps_path)
    if params.check_finite:
        require_finite(features, ims_path, stride)
    return RetrievalSplit(
        name=name,
        images=ImageStore("features", features=features),
        captions=captions,
        caption_to_image=np.arange(len(captions)) // k,
        image_ids=_image_ids(root / f"{name}_ids.txt", len(rows), stride, name),
    )


@DATA_FORMATS.register("precomp", PrecompParams)
def load_precomp(params: PrecompParams) -> dict[str, RetrievalSplit]:
    """VSE++/SCAN precomputed features: {split}_ims.npy + {split}_caps.txt per split."""
    root = require_root(params.root, "the folder holding {split}_ims.npy and {split}_caps.txt")
    names = select_splits(precomp_split_names(root), params.splits,
                          f"{root} (looked for *_ims.npy and *_caps.txt)")
    return {name: load_precomp_split(root, name, params) for name in names}
