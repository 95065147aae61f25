"""The VSE++/SCAN precomputed layout: ``{split}_ims.npy`` + ``{split}_caps.txt`` per split.

``root`` holds, for each split (``train``, ``dev``, ``test``, ``testall``...):

- ``{split}_ims.npy``: float [N, D] pooled features or [N, R, D] region features; opened
  memory-mapped, so large files are not read into memory;
- ``{split}_caps.txt``: UTF-8, one caption per line, ``k`` consecutive captions per image,
  in image order (caption ``j`` describes image ``j // k``);
- ``{split}_ids.txt`` (optional): one image id per row of ``{split}_ims.npy``, distinct
  images with distinct ids (rows repeated by ``image_stride`` may repeat theirs); without it
  the ids are ``"{split}-{i}"``.

The module also holds the file helpers the other loaders share (text, ``.npy``, splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.formats import DATA_FORMATS
from vsekit.data.formats._io import (
    check_split_names,
    load_float_array,
    order_splits,
    read_nonblank_lines,
    require_file,
    require_finite,
    require_root,
    require_unique,
    select_splits,
)
from vsekit.errors import require

# ---- helpers shared by the loaders ------------------------------------------------------


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
    require_unique(ids[::stride], "image id", path, "give each image its own id, or set "
                   "data.image_stride when each image row repeats once per caption", stride)
    return ids[::stride]


def load_precomp_split(root: Path, name: str, params: PrecompParams) -> RetrievalSplit:
    """One split of a precomp folder (features stay memory-mapped)."""
    ims_path = require_file(root / f"{name}_ims.npy",
                            "float image features [N, D] or [N, R, D] saved with numpy.save")
    caps_path = require_file(root / f"{name}_caps.txt", "UTF-8 captions, one per line")
    rows = load_float_array(ims_path, (2, 3))
    require(len(rows) > 0, f"{ims_path} has no rows; save the image features of split {name!r}")
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
