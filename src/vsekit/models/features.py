"""Precomputed features: extract them once from image files, and read batches of them back.

:func:`extract_features` writes the layout vsekit trains on: ``out`` is a ``.npy`` array
[N, 1280] of EfficientNet-Lite0 features and ``out.with_suffix('.txt')`` names the image
file of each row, in row order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from vsekit.data.images import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, load_image, transform
from vsekit.errors import VsekitError
from vsekit.models.efficientnet import pretrained_efficientnet_lite0


def gather_rows(array: np.ndarray, index: np.ndarray, what: str) -> torch.Tensor:
    """Rows ``index`` of a (possibly memory-mapped) feature array as float32; NaN/Inf →
    VsekitError naming ``what`` (e.g. "image features").
    """
    rows = np.asarray(array[np.asarray(index)], dtype=np.float32)
    if not np.isfinite(rows).all():
        raise VsekitError(f"{what} contain NaN or Inf values; recompute or clean the feature "
                          "file")
    return torch.from_numpy(rows)


def list_images(folder: str | Path) -> list[Path]:
    """The .jpg/.jpeg/.png files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VsekitError(f"image folder {str(folder)!r} not found; pass a folder of JPEG/PNG "
                          "images")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VsekitError(f"image folder {str(folder)!r} has no .jpg, .jpeg or .png files; pass "
                          "the folder that holds the images")
    return files


def image_file_features(image_paths: list[Path], *, batch_size: int = 64, image_size: int = 224,
                        device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """EfficientNet-Lite0 features of image files, float32 [N, 1280] (not saved).

    Each image is resized to ``image_size × image_size`` (bicubic) and ImageNet-normalised,
    the preprocessing of the Flickr8k pack's features.
    """
    if not image_paths:
        raise VsekitError("no images to encode; pass a folder with .jpg/.jpeg/.png files")
    if batch_size < 1 or image_size < 32:
        raise VsekitError(f"batch_size must be at least 1 and image_size at least 32, got "
                          f"{batch_size} and {image_size}")
    model = pretrained_efficientnet_lite0().to(device)
    chunks = []
    starts = range(0, len(image_paths), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="features", unit="batch", disable=not progress):
            batch = [transform(load_image(p), image_size, IMAGENET_MEAN, IMAGENET_STD)
                     for p in image_paths[start:start + batch_size]]
            chunks.append(model.features(torch.stack(batch).to(device)).float().cpu().numpy())
    return np.concatenate(chunks)


def extract_features(image_paths: list[Path], out: str | Path, *, batch_size: int = 64,
                     image_size: int = 224, dtype: Literal["float16", "float32"] = "float16",
                     device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """Encode images with :func:`image_file_features` (on ``device``) and save them.

    Returns the array [N, 1280] (``dtype``) also written to ``out``; the file names go to
    ``out.with_suffix('.txt')``, one a line.
    """
    out = Path(out)
    if out.suffix != ".npy":
        raise VsekitError(f"feature file {str(out)!r} must end in .npy")
    features = image_file_features(image_paths, batch_size=batch_size, image_size=image_size,
                                   device=device, progress=progress).astype(dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features)
    out.with_suffix(".txt").write_text("".join(f"{Path(p).name}\n" for p in image_paths),
                                       encoding="utf-8")
    return features
