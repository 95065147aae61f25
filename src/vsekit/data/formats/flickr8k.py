"""Flickr8k: the project's real-data pack (``flickr8k``) and the Kaggle layout (``flickr8k_csv``).

The pack (see its README) holds ``images.txt``, ``captions.tsv`` (tab-separated, unquoted),
``splits.json`` (row indices into ``images.txt``), float16 EfficientNet-Lite0 image features
[8091, 1280], float16 MiniLM caption features [40455, 384] and 200 sample JPEGs.

The Kaggle layout is ``captions.txt`` (CSV with header ``image,caption``, any number of
captions per image) beside an ``Images/`` folder of JPEGs.

Both loaders build one split over every image, then cut it into train/dev/test with
:meth:`RetrievalSplit.subset_images` (caption order kept, image ids = file names).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.formats import DATA_FORMATS
from vsekit.data.formats._io import (
    check_split_names,
    load_float_array,
    order_splits,
    read_json,
    read_nonblank_lines,
    read_text,
    require_file,
    require_finite,
    require_images_exist,
    require_root,
    require_unique,
    select_splits,
)
from vsekit.errors import VsekitError, require

IMAGE_FEATURES = "features/image_effl0_1280.f16.npy"
CAPTION_FEATURES = "features/caption_minilm_384.f16.npy"
SAMPLE_DIR = "images_sample"


# ---- helpers shared with the karpathy loader ----------------------------------------------


# ---- tables and lists of names -------------------------------------------------------------


def read_caption_table(path: Path, delimiter: str, quoting: int) -> tuple[list[str], list[str]]:
    """(image name, caption) per data row of a table whose header names ``image`` and
    ``caption`` columns; both stripped, blank lines skipped, empty fields are errors."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter,
                        quoting=quoting, strict=True)
    try:
        header = [cell.strip() for cell in next(reader, [])]
        missing = [column for column in ("image", "caption") if column not in header]
        if missing:
            raise VsekitError(f"{path} has no {missing[0]!r} column (header {header}); its "
                              "first line must name the columns image and caption")
        image_col, caption_col = header.index("image"), header.index("caption")
        names, captions = [], []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            require(len(row) == len(header), f"{path} line {line} has {len(row)} fields, "
                                             f"expected {len(header)} ({', '.join(header)})")
            name, caption = row[image_col].strip(), row[caption_col].strip()
            require(name != "", f"{path} line {line} has an empty image name; fill it in")
            require(caption != "", f"{path} line {line} has an empty caption; write the caption "
                                   "or delete the line")
            names.append(name)
            captions.append(caption)
    except csv.Error as exc:
        raise VsekitError(f"{path} line {reader.line_num} is not valid CSV ({exc}); fix the "
                          "quoting on that line") from None
    return names, captions


def rows_of(names: list[str], position: dict[str, int], source: str, known: str) -> np.ndarray:
    """int64 row of each name in ``position``; unknown names are an error naming the first."""
    unknown = [name for name in names if name not in position]
    if unknown:
        raise VsekitError(f"{source} names {len(unknown)} images not in {known} (first: "
                          f"{unknown[0]!r}); remove those entries or add them to {known}")
    return np.array([position[name] for name in names], dtype=np.int64)


def unique_in_order(names: list[str]) -> list[str]:
    """Distinct ``names`` in order of first appearance."""
    return list(dict.fromkeys(names))


# ---- the real-data pack ----------------------------------------------------------------------


@dataclass
class Flickr8kParams:
    """Params of the ``flickr8k`` format (the real-data pack).

    Attributes:
        root: the pack folder (images.txt, captions.tsv, splits.json, features/).
        images: "features": float32 EfficientNet-Lite0 features [N, 1280] per split;
            "files": paths of the JPEGs in ``images_sample/``; only the images present there
            are kept, with their captions (the pack ships 100 train + 100 test images).
        caption_features: attach the MiniLM sentence embeddings as float32
            ``split.caption_features`` [N_cap, 384].
        splits: splits to load; None loads every split of splits.json (in "files" mode,
            every split with at least one sample image).
    """

    root: str | None = None
    images: Literal["features", "files"] = "features"
    caption_features: bool = True
    splits: list[str] | None = None

    def validate(self, where: str) -> None:
        require(self.root is not None, f"{where}.root is required: set it to the Flickr8k pack "
                                       "folder (e.g. ../shared/data/flickr8k)")
        check_split_names(self.splits, where)


def read_split_rows(path: Path, n_images: int) -> dict[str, np.ndarray]:
    """``splits.json``: split name → int64 rows of ``images.txt``, checked in range."""
    data = read_json(path)
    require(isinstance(data, dict) and len(data) > 0,
            f"{path} must map split names to lists of images.txt rows")
    splits = {}
    for name, rows in data.items():
        valid = isinstance(rows, list) and all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r < n_images for r in rows)
        require(valid, f"{path}: split {name!r} must be a list of images.txt row indices in "
                       f"0..{n_images - 1}; rebuild the pack")
        splits[name] = np.asarray(rows, dtype=np.int64)
    return splits


def load_pack_features(path: Path, n_rows: int, rows_of_what: str) -> np.ndarray:
    """float32 [n_rows, D] from a float ``.npy`` [n_rows, D] of the pack, finite."""
    array = load_float_array(require_file(path, f"float features [{n_rows}, D], one row per "
                                                f"{rows_of_what}"), (2,))
    require(len(array) == n_rows, f"{path} has {len(array)} rows, expected {n_rows} (one per "
                                  f"{rows_of_what}); rebuild the pack")
    require_finite(array, path)
    return np.asarray(array, dtype=np.float32)


def _pack_images(root: Path, names: list[str], kind: str) -> tuple[ImageStore, np.ndarray]:
    """The image store over every pack image and a bool mask [N] of the usable ones."""
    if kind == "features":
        features = load_pack_features(root / IMAGE_FEATURES, len(names), "line of images.txt")
        return ImageStore("features", features=features), np.ones(len(names), dtype=bool)
    folder = root / SAMPLE_DIR
    require(folder.is_dir(), f"{folder} not found: images: files needs the pack's sample "
                             "JPEGs there (or use images: features)")
    present = {path.name for path in folder.iterdir()}
    mask = np.array([name in present for name in names], dtype=bool)
    files = [folder / name for name in names]
    require_images_exist([files[i] for i in np.flatnonzero(mask)], str(root / "images.txt"))
    return ImageStore("files", files=files), mask


@DATA_FORMATS.register("flickr8k", Flickr8kParams)
def load_flickr8k(params: Flickr8kParams) -> dict[str, RetrievalSplit]:
    """The Flickr8k real-data pack: image/caption features, or the 200 sample JPEGs."""
    root = require_root(params.root, "the Flickr8k pack folder (images.txt, captions.tsv, "
                                     "splits.json, features/)")
    images_txt = require_file(root / "images.txt", "one image file name a line")
    names = read_nonblank_lines(images_txt, "an image file name")
    require_unique(names, "image file name", images_txt)
    tsv = require_file(root / "captions.tsv", "a tab-separated table image, caption_index, "
                                              "caption")
    caption_images, captions = read_caption_table(tsv, "\t", csv.QUOTE_NONE)
    caption_to_image = rows_of(caption_images, {n: i for i, n in enumerate(names)}, str(tsv),
                               "images.txt")
    splits_path = require_file(root / "splits.json", "split name → images.txt row indices")
    split_rows = read_split_rows(splits_path, len(names))
    images, usable = _pack_images(root, names, params.images)
    caption_features = (load_pack_features(root / CAPTION_FEATURES, len(captions),
                                           "row of captions.tsv")
                        if params.caption_features else None)
    everything = RetrievalSplit(
        name="all", images=images, captions=captions, caption_to_image=caption_to_image,
        image_ids=names, caption_features=caption_features,
        image_root=root / SAMPLE_DIR if params.images == "files" else None)
    out = {}
    for name in select_splits(order_splits(list(split_rows)), params.splits, str(splits_path)):
        rows = split_rows[name][usable[split_rows[name]]]
        if len(rows) == 0 and params.splits is None:
            continue
        require(len(rows) > 0, f"split {name!r} has no image in {root / SAMPLE_DIR}; use "
                               "images: features or drop it from data.splits")
        out[name] = everything.subset_images(rows, name)
    require(len(out) > 0, f"no split has an image in {root / SAMPLE_DIR}; use images: features")
    return out


# ---- the Kaggle captions.txt + Images/ layout -------------------------------------------


@dataclass
class Flickr8kCsvParams:
    """Params of the ``flickr8k_csv`` format (Kaggle ``captions.txt`` + ``Images/``).

    Attributes:
        root: folder holding ``captions_file`` and ``image_dir``.
        captions_file: CSV (header ``image,caption``) inside ``root``.
        image_dir: folder of the JPEGs inside ``root``.
        split_files: split name → text file (relative to ``root``) listing that split's
            image file names one a line, as in Flickr_8k.trainImages.txt; images in no list
            are dropped. Without it, a seeded permutation gives ``test_size`` test images,
            ``dev_size`` dev images and the rest train (each split in captions.txt order).
        dev_size, test_size: image counts of the seeded split (0 leaves that split out).
        seed: seed of the permutation.
        splits: splits to load; None loads every split defined.
        check_images: read the first bytes of every image file used, so a file that is not
            an image (an HTML error page, an empty download) is reported before training.
    """

    root: str | None = None
    captions_file: str = "captions.txt"
    image_dir: str = "Images"
    split_files: dict | None = None
    dev_size: int = 1000
    test_size: int = 1000
    seed: int = 0
    splits: list[str] | None = None
    check_images: bool = True

    def validate(self, where: str) -> None:
        require(self.root is not None, f"{where}.root is required: set it to the folder "
                                       "holding captions.txt and Images/")
        check_split_names(self.splits, where)
        require(self.seed >= 0, f"{where}.seed must be non-negative, got {self.seed}")
        for name in ("dev_size", "test_size"):
            require(getattr(self, name) >= 0,
                    f"{where}.{name} must be non-negative, got {getattr(self, name)}")
        if self.split_files is not None:
            require(len(self.split_files) > 0 and all(
                isinstance(f, str) and f for f in self.split_files.values()),
                f"{where}.split_files must map split names to list files, e.g. "
                "{train: Flickr_8k.trainImages.txt}")


def seeded_split_rows(n_images: int, dev_size: int, test_size: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted int64 rows for train/dev/test from one seeded permutation of N images.

    test = first ``test_size`` of the permutation, dev = next ``dev_size``, train = the rest;
    empty splits are left out.
    """
    require(dev_size + test_size < n_images,
            f"{n_images} images are too few for dev_size={dev_size} + test_size={test_size} "
            "and a train split; lower data.dev_size and data.test_size")
    order = np.random.default_rng(seed).permutation(n_images)
    bounds = {"train": (dev_size + test_size, n_images), "dev": (test_size, test_size + dev_size),
              "test": (0, test_size)}
    return {name: np.sort(order[lo:hi]).astype(np.int64)
            for name, (lo, hi) in bounds.items() if hi > lo}


def listed_split_rows(root: Path, split_files: dict[str, str], position: dict[str, int],
                      known: str) -> dict[str, np.ndarray]:
    """Split name → int64 rows of the images each list file names (disjoint, no repeats)."""
    owner: dict[str, str] = {}
    splits = {}
    for name, file in split_files.items():
        path = require_file(root / file, "image file names, one a line (like "
                                         "Flickr_8k.trainImages.txt)")
        listed = read_nonblank_lines(path, "an image file name")
        for image in listed:
            if image in owner:
                raise VsekitError(f"image {image!r} is listed twice (in the {owner[image]} and "
                                  f"{name} split files); list each image once")
            owner[image] = str(name)
        splits[str(name)] = rows_of(listed, position, str(path), known)
    return splits


@DATA_FORMATS.register("flickr8k_csv", Flickr8kCsvParams)
def load_flickr8k_csv(params: Flickr8kCsvParams) -> dict[str, RetrievalSplit]:
    """Flickr8k as downloaded from Kaggle: captions.txt (image,caption) + Images/ JPEGs."""
    root = require_root(params.root, "the folder holding captions.txt and Images/")
    table = require_file(root / params.captions_file, "a CSV with header image,caption")
    caption_images, captions = read_caption_table(table, ",", csv.QUOTE_MINIMAL)
    names = unique_in_order(caption_images)
    position = {name: i for i, name in enumerate(names)}
    split_rows = (listed_split_rows(root, params.split_files, position, str(table))
                  if params.split_files is not None
                  else seeded_split_rows(len(names), params.dev_size, params.test_size,
                                         params.seed))
    selected = select_splits(order_splits(list(split_rows)), params.splits,
                             "data.split_files" if params.split_files else "the seeded split")
    image_root = root / params.image_dir
    files = [image_root / name for name in names]
    used = np.unique(np.concatenate([split_rows[name] for name in selected]))
    require_images_exist([files[i] for i in used], str(table), params.check_images)
    everything = RetrievalSplit(
        name="all", images=ImageStore("files", files=files), captions=captions,
        caption_to_image=rows_of(caption_images, position, str(table), str(table)),
        image_ids=names, image_root=image_root)
    return {name: everything.subset_images(split_rows[name], name) for name in selected}
