"""Standard evaluation protocols: which images and captions each fold evaluates.

A protocol turns a split (``caption_to_image`` and the number of images) into folds; the
metrics of a protocol are the mean over its folds of the metrics of each fold's similarity
matrix (docs/methods.md §3.1). Registered by name in :data:`PROTOCOLS`:

- ``any``: the whole split as one fold (any size; images without captions are left out of
  image→text, as in :func:`vsekit.eval.retrieval_ranks`).
- ``f30k-1k``: Flickr30K 1K test, 1,000 images × 5 captions, one fold.
- ``coco-5k``: the COCO 5K test, 5,000 images × 5 captions, one fold.
- ``coco-1k``: five folds of 1,000 consecutive images of the COCO 5K test (fold k = images
  1000k … 1000k + 999 in split order) with their captions; every metric averaged over the
  folds (VSE++, SCAN, VSE∞).

The checks only see sizes: any split of 1,000 images with 5 captions each passes ``f30k-1k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vsekit.errors import require
from vsekit.registry import Registry

PROTOCOLS = Registry("evaluation protocol")


@dataclass(frozen=True)
class Fold:
    """One evaluated block of a split.

    Attributes:
        images: int64 [n_i], indices of the fold's images in the split (in split order).
        captions: int64 [n_c], indices of the fold's captions in the split (in split order).
        caption_to_image: int64 [n_c], each fold caption's image as an index into ``images``.
    """

    images: np.ndarray
    captions: np.ndarray
    caption_to_image: np.ndarray


@dataclass
class NoParams:
    """The standard protocols take no parameters."""


def image_folds(caption_to_image: np.ndarray, n_images: int, fold_images: int) -> list[Fold]:
    """Folds of ``fold_images`` consecutive images (the last may be shorter) and their captions.

    Args:
        caption_to_image: int [n_captions], each caption's image index in 0..n_images-1.
        n_images: images in the split.
        fold_images: images per fold, at least 1.
    """
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    folds = []
    for start in range(0, n_images, fold_images):
        stop = min(start + fold_images, n_images)
        captions = np.flatnonzero((caption_to_image >= start) & (caption_to_image < stop))
        folds.append(Fold(images=np.arange(start, stop, dtype=np.int64), captions=captions,
                          caption_to_image=caption_to_image[captions] - start))
    return folds


def check_size(protocol: str, caption_to_image: np.ndarray, n_images: int, images: int,
               captions_per_image: int, hint: str) -> None:
    """Raise a one-line :class:`VsekitError` unless the split has ``images`` images with exactly
    ``captions_per_image`` captions each."""
    per_image = np.bincount(np.asarray(caption_to_image, dtype=np.int64), minlength=n_images)
    fits = n_images == images and bool((per_image == captions_per_image).all())
    low, high = int(per_image.min()), int(per_image.max())
    spread = f"{low}" if low == high else f"{low}–{high}"
    require(fits, f"protocol {protocol!r} needs {images:,} images with {captions_per_image} "
                  f"captions each, but the split has {n_images:,} images and "
                  f"{len(caption_to_image):,} captions ({spread} per image); {hint}")


F30K_HINT = ("evaluate the Flickr30K 1K test split (precomp 'test'), or use --protocol any for "
             "the whole split")
COCO_HINT = ("evaluate the COCO 5K test split (VSE/SCAN precomp name it 'testall', with "
             "image_stride 5 when its image rows repeat per caption), or use --protocol any")


@PROTOCOLS.register("any", NoParams)
def whole_split(params: NoParams, caption_to_image: np.ndarray, n_images: int) -> list[Fold]:
    """The whole split as one fold (any size)."""
    return image_folds(caption_to_image, n_images, max(n_images, 1))


@PROTOCOLS.register("f30k-1k", NoParams)
def flickr30k_1k(params: NoParams, caption_to_image: np.ndarray, n_images: int) -> list[Fold]:
    """Flickr30K 1K test: 1,000 images × 5 captions, one fold."""
    check_size("f30k-1k", caption_to_image, n_images, 1000, 5, F30K_HINT)
    return image_folds(caption_to_image, n_images, 1000)


@PROTOCOLS.register("coco-5k", NoParams)
def coco_5k(params: NoParams, caption_to_image: np.ndarray, n_images: int) -> list[Fold]:
    """COCO 5K test: 5,000 images × 5 captions, one fold."""
    check_size("coco-5k", caption_to_image, n_images, 5000, 5, COCO_HINT)
    return image_folds(caption_to_image, n_images, 5000)


@PROTOCOLS.register("coco-1k", NoParams)
def coco_1k(params: NoParams, caption_to_image: np.ndarray, n_images: int) -> list[Fold]:
    """COCO 1K: 5 folds of 1,000 consecutive 5K-test images with their captions, averaged."""
    check_size("coco-1k", caption_to_image, n_images, 5000, 5, COCO_HINT)
    return image_folds(caption_to_image, n_images, 1000)


def protocol_folds(name: str, caption_to_image: Sequence[int] | np.ndarray,
                   n_images: int) -> list[Fold]:
    """The folds of protocol ``name`` for a split (one-line VsekitError on an unknown name or
    a split of the wrong size)."""
    return PROTOCOLS.build(name, NoParams(), caption_to_image=np.asarray(caption_to_image),
                           n_images=n_images)


def average_metrics(per_fold: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over folds (keys of the first fold; all folds must have them)."""
    require(len(per_fold) > 0, "no folds to average")
    return {key: float(np.mean([fold[key] for fold in per_fold])) for key in per_fold[0]}
