"""The in-memory description of one split of an image-text retrieval dataset.

Every loader in :mod:`vsekit.data.formats` (and the synthetic generator) returns a
:class:`RetrievalSplit`. Training iterates over captions (one item per caption, the VSE
convention); evaluation encodes every image and every caption once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vsekit.errors import VsekitError, require

ImageKind = Literal["features", "pixels", "files"]


@dataclass
class ImageStore:
    """What the image encoder consumes, for every image of a split.

    Exactly one of the three payloads is set, named by ``kind``:

    - ``features``: float array [N, D] (pooled) or [N, R, D] (regions); may be a memmap.
    - ``pixels``: uint8 array [N, H, W, 3] (the synthetic dataset).
    - ``files``: list of N image file paths (JPEG/PNG), decoded on demand.
    """

    kind: ImageKind
    features: np.ndarray | None = None
    pixels: np.ndarray | None = None
    files: list[Path] | None = None

    def __post_init__(self) -> None:
        payload = {"features": self.features, "pixels": self.pixels, "files": self.files}
        require(payload[self.kind] is not None, f"image store of kind {self.kind!r} has no data")
        if self.kind == "features":
            require(self.features.ndim in (2, 3),
                    f"image features must be [N, D] or [N, R, D], got shape {self.features.shape}")
        if self.kind == "pixels":
            require(self.pixels.ndim == 4 and self.pixels.shape[-1] == 3,
                    f"image pixels must be [N, H, W, 3], got shape {self.pixels.shape}")

    def __len__(self) -> int:
        if self.kind == "files":
            return len(self.files)
        return len(self.features if self.kind == "features" else self.pixels)

    def subset(self, index: np.ndarray) -> ImageStore:
        """The images at ``index`` (int array), same kind."""
        if self.kind == "files":
            return ImageStore("files", files=[self.files[i] for i in index])
        if self.kind == "features":
            return ImageStore("features", features=np.asarray(self.features[index]))
        return ImageStore("pixels", pixels=np.asarray(self.pixels[index]))

    @property
    def feature_dim(self) -> int | None:
        """D for feature stores, else None."""
        return int(self.features.shape[-1]) if self.kind == "features" else None


@dataclass
class RetrievalSplit:
    """One split: N_img images, N_cap captions, and how they belong together.

    Attributes:
        name: split name ("train", "dev", "test", ...).
        images: the image payload (see :class:`ImageStore`), N_img entries.
        captions: N_cap caption strings.
        caption_to_image: int64 [N_cap], the index of each caption's image (any number of
            captions per image).
        image_ids: N_img stable identifiers (file name, COCO id as string, ...).
        caption_features: optional float [N_cap, D_t] precomputed sentence embeddings.
        relevance: optional bool [N_img, N_cap], complete relevance (caption truly describes
            image), known only for the synthetic dataset.
        graded_relevance: optional float32 [N_img, N_cap] in [0, 1] (fraction of a caption's
            facts an image satisfies), synthetic dataset only.
        image_root: optional folder the image files live in (for reports).
    """

    name: str
    images: ImageStore
    captions: list[str]
    caption_to_image: np.ndarray
    image_ids: list[str]
    caption_features: np.ndarray | None = None
    relevance: np.ndarray | None = None
    graded_relevance: np.ndarray | None = None
    image_root: Path | None = None
    image_groups: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.caption_to_image = np.asarray(self.caption_to_image, dtype=np.int64)
        n_img, n_cap = len(self.images), len(self.captions)
        require(n_img > 0, f"split {self.name!r} has no images")
        require(n_cap > 0, f"split {self.name!r} has no captions")
        require(self.caption_to_image.shape == (n_cap,),
                f"split {self.name!r}: caption_to_image has shape {self.caption_to_image.shape}, "
                f"expected ({n_cap},)")
        require(len(self.image_ids) == n_img,
                f"split {self.name!r}: {len(self.image_ids)} image ids for {n_img} images")
        if self.caption_to_image.min() < 0 or self.caption_to_image.max() >= n_img:
            raise VsekitError(f"split {self.name!r}: a caption points to an image index outside "
                              f"0..{n_img - 1}")
        if self.caption_features is not None:
            require(len(self.caption_features) == n_cap,
                    f"split {self.name!r}: {len(self.caption_features)} caption feature rows for "
                    f"{n_cap} captions")
        for attr in ("relevance", "graded_relevance"):
            value = getattr(self, attr)
            require(value is None or value.shape == (n_img, n_cap),
                    f"split {self.name!r}: {attr} must have shape ({n_img}, {n_cap})")
        # Dense integer per distinct image id: what losses mask on ("same image").
        _, self.image_groups = np.unique(np.asarray(self.image_ids, dtype=object).astype(str),
                                         return_inverse=True)
        self.image_groups = self.image_groups.astype(np.int64)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def subset_images(self, image_index: Sequence[int] | np.ndarray, name: str | None = None
                      ) -> RetrievalSplit:
        """The split restricted to ``image_index`` and their captions (caption order kept)."""
        image_index = np.asarray(image_index, dtype=np.int64)
        remap = np.full(self.n_images, -1, dtype=np.int64)
        remap[image_index] = np.arange(len(image_index))
        keep = np.flatnonzero(remap[self.caption_to_image] >= 0)

        def rows(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[image_index][:, keep]

        return RetrievalSplit(
            name=name or self.name,
            images=self.images.subset(image_index),
            captions=[self.captions[j] for j in keep],
            caption_to_image=remap[self.caption_to_image[keep]],
            image_ids=[self.image_ids[i] for i in image_index],
            caption_features=None if self.caption_features is None
            else np.asarray(self.caption_features[keep]),
            relevance=rows(self.relevance),
            graded_relevance=rows(self.graded_relevance),
            image_root=self.image_root,
        )


@dataclass
class Batch:
    """One training or evaluation batch of B caption-image pairs.

    ``images`` is what the image encoder takes (features [B, D] / [B, R, D], or pixels
    [B, 3, H, W] float); ``text`` is what the text encoder takes (token ids, lengths,
    attention masks or precomputed features, by encoder). ``image_ids`` are the dense image
    groups used for same-image masking (int64 [B]).
    """

    images: torch.Tensor
    text: dict[str, torch.Tensor]
    image_index: torch.Tensor
    caption_index: torch.Tensor
    image_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            images=self.images.to(device, non_blocking=True),
            text={k: v.to(device, non_blocking=True) for k, v in self.text.items()},
            image_index=self.image_index.to(device),
            caption_index=self.caption_index.to(device),
            image_ids=self.image_ids.to(device),
        )
