"""Image encoders, registered in :data:`IMAGE_ENCODERS` by ``type``.

All map a batch to unnormalised embeddings [B, embed_dim]:

- ``projection``: precomputed features [B, D_in] (regions [B, R, D_in] are pooled) → head.
- ``gpo``: precomputed region features [B, R, D_in] → head per region → GPO pooling (VSE∞).
- ``cnn``: raw pixels → a small conv net trained from scratch (synthetic scenes).
- ``efficientnet_lite0``: image files or pixels → pretrained EfficientNet-Lite0 → head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from vsekit.data.dataset import ImageStore
from vsekit.data.images import HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD, load_image, transform
from vsekit.data.randaugment import PILAugment
from vsekit.errors import VsekitError
from vsekit.models.base import IMAGE_ENCODERS, FreezableBackbone, ImageEncoder, ModelContext
from vsekit.models.efficientnet import FEATURE_DIM, pretrained_efficientnet_lite0
from vsekit.models.features import gather_rows
from vsekit.models.pooling import GPO, ProjectionHead


def require_kind(context: ModelContext, kinds: tuple[str, ...], encoder: str, fix: str) -> None:
    """VsekitError unless the data's image kind is one of ``kinds``."""
    if context.image_kind not in kinds:
        raise VsekitError(f"image encoder {encoder!r} takes {' or '.join(kinds)} images but the "
                          f"data provides {context.image_kind!r}; {fix}")


def check_positive(where: str, **values: int | float | None) -> None:
    """VsekitError naming the first value that is not positive (None values are skipped)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise VsekitError(f"{where}.{name} must be positive, got {value}")


def check_probability(where: str, **values: float) -> None:
    """VsekitError naming the first value outside [0, 1)."""
    for name, value in values.items():
        if not 0 <= value < 1:
            raise VsekitError(f"{where}.{name} must be in [0, 1), got {value}")


def feature_batch(store: ImageStore, index: np.ndarray, encoder: str) -> torch.Tensor:
    """float32 rows ``index`` of a feature store; other store kinds → VsekitError."""
    if store.kind != "features":
        raise VsekitError(f"image encoder {encoder!r} needs precomputed features, got "
                          f"{store.kind!r} images; use type cnn or efficientnet_lite0")
    return gather_rows(store.features, index, "image features")


def pixel_batch(store: ImageStore, index: np.ndarray, size: int, mean: tuple[float, ...],
                std: tuple[float, ...], augment: bool = False,
                generator: torch.Generator | None = None,
                crop_scale: tuple[float, float] = (0.08, 1.0),
                extra: PILAugment | None = None) -> torch.Tensor:
    """float32 [B, 3, size, size] for images ``index`` of a pixels or files store, each
    resized (or, when ``augment``, randomly cropped, flipped and passed through ``extra``) and
    normalised.
    """
    if store.kind == "features":
        raise VsekitError("this image encoder needs pixels or image files, but the data holds "
                          "precomputed features; use type projection or gpo")
    images = ([load_image(store.files[i]) for i in index] if store.kind == "files"
              else [Image.fromarray(np.asarray(store.pixels[i], dtype=np.uint8)) for i in index])
    return torch.stack([transform(img, size, mean, std, augment, generator, crop_scale, extra)
                        for img in images])


# ---------------------------------------------------------------- precomputed features


@dataclass
class ProjectionParams:
    """Head on precomputed features (VSE++ / VSE∞ precomputed baselines).

    ``hidden``: add a residual MLP with this width (None: linear only). ``standardize``:
    standardise input dimensions with running batch statistics. ``dropout``: probability of
    dropping an input feature in training. ``region_pool``: how region features [R, D_in] are
    pooled, after the head ("mean" or "max").
    """

    hidden: int | None = None
    standardize: bool = True
    dropout: float = 0.0
    region_pool: Literal["mean", "max"] = "mean"

    def validate(self, where: str) -> None:
        check_positive(where, hidden=self.hidden)
        check_probability(where, dropout=self.dropout)


@IMAGE_ENCODERS.register("projection", ProjectionParams)
class ProjectionEncoder(ImageEncoder):
    """Precomputed features [B, D_in] or regions [B, R, D_in] → [B, embed_dim]."""

    def __init__(self, params: ProjectionParams, context: ModelContext) -> None:
        super().__init__()
        require_kind(context, ("features",), "projection",
                     "use type cnn or efficientnet_lite0 for raw images")
        self.region_pool = params.region_pool
        self.head = ProjectionHead(context.image_feature_dim, context.embed_dim, params.hidden,
                                   params.standardize, params.dropout)

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        return feature_batch(store, index, "projection")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(images)
        if out.ndim == 3:
            out = out.mean(1) if self.region_pool == "mean" else out.amax(1)
        return out


@dataclass
class GPOParams:
    """Region features → head per region → GPO (VSE∞). ``hidden``/``standardize`` as for
    ``projection``; ``d_pe``/``d_hidden``: GPO positional-encoding and GRU sizes.
    """

    hidden: int | None = None
    standardize: bool = True
    d_pe: int = 32
    d_hidden: int = 32

    def validate(self, where: str) -> None:
        check_positive(where, hidden=self.hidden, d_pe=self.d_pe, d_hidden=self.d_hidden)
        if self.d_pe % 2:
            raise VsekitError(f"{where}.d_pe must be even (sin/cos pairs), got {self.d_pe}")


@IMAGE_ENCODERS.register("gpo", GPOParams)
class GPOEncoder(ImageEncoder):
    """Region features [B, R, D_in] → [B, embed_dim] with the Generalized Pooling Operator."""

    def __init__(self, params: GPOParams, context: ModelContext) -> None:
        super().__init__()
        require_kind(context, ("features",), "gpo",
                     "use type cnn or efficientnet_lite0 for raw images")
        self.head = ProjectionHead(context.image_feature_dim, context.embed_dim, params.hidden,
                                   params.standardize)
        self.gpo = GPO(params.d_pe, params.d_hidden)

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        batch = feature_batch(store, index, "gpo")
        if batch.ndim != 3:
            raise VsekitError("image encoder 'gpo' pools region features [N, R, D], but these "
                              "are pooled [N, D]; use type projection")
        return batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        regions = self.head(images)
        lengths = torch.full((len(regions),), regions.shape[1], dtype=torch.long)
        return self.gpo(regions, lengths.to(regions.device))[0]


# ---------------------------------------------------------------- raw pixels


@dataclass
class CNNParams:
    """Small conv net from scratch: four conv-BN-ReLU blocks of stride 2 with ``width``,
    ``width``, 2·``width``, 4·``width`` channels → global average pool → Linear.

    ``augment``: random horizontal flips in training (off by default: flips swap the
    left/right facts of synthetic captions). ``image_size``: side image files are resized to
    (pixel arrays keep their own size).
    """

    width: int = 32
    augment: bool = False
    image_size: int = 64

    def validate(self, where: str) -> None:
        check_positive(where, width=self.width, image_size=self.image_size)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@IMAGE_ENCODERS.register("cnn", CNNParams)
class CNNEncoder(ImageEncoder):
    """Pixels [B, 3, H, W] (normalised to [-1, 1]) → [B, embed_dim].

    Flips draw from ``self.generator`` (seed 0; reseed with ``generator.manual_seed``).
    """

    def __init__(self, params: CNNParams, context: ModelContext) -> None:
        super().__init__()
        require_kind(context, ("pixels", "files"), "cnn",
                     "use type projection or gpo for precomputed features")
        self.params = params
        w = params.width
        self.body = nn.Sequential(conv_block(3, w), conv_block(w, w),
                                  conv_block(w, 2 * w), conv_block(2 * w, 4 * w))
        self.fc = nn.Linear(4 * w, context.embed_dim)
        self.generator = torch.Generator().manual_seed(0)

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        if store.kind == "pixels":
            pixels = torch.from_numpy(np.asarray(store.pixels[np.asarray(index)]))
            images = pixels.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)
        else:
            images = pixel_batch(store, index, self.params.image_size, HALF_MEAN_STD,
                                 HALF_MEAN_STD)
        if train and self.params.augment:
            flip = torch.rand(len(images), generator=self.generator) < 0.5
            images[flip] = images[flip].flip(-1)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(images).mean(dim=(2, 3)))


@dataclass
class EfficientNetParams:
    """Pretrained EfficientNet-Lite0 (ImageNet, shipped offline) → head.

    ``freeze``: keep the backbone fixed and in eval mode (default). ``image_size``: input
    side. ``augment``: random resized crop (area fraction ``crop_scale``) + horizontal flip in
    training. ``hidden``: residual MLP width of the head (None: linear).
    """

    freeze: bool = True
    image_size: int = 224
    augment: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hidden: int | None = None

    def validate(self, where: str) -> None:
        check_positive(where, hidden=self.hidden)
        scale = self.crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise VsekitError(f"{where}.crop_scale must be two numbers 0 < low <= high <= 1, "
                              f"got {list(scale)}")
        if self.image_size < 32:
            raise VsekitError(f"{where}.image_size must be at least 32, got {self.image_size}")


@IMAGE_ENCODERS.register("efficientnet_lite0", EfficientNetParams)
class EfficientNetEncoder(FreezableBackbone, ImageEncoder):
    """Images [B, 3, S, S] (ImageNet-normalised) → backbone [B, 1280] → [B, embed_dim].

    Augmentation draws from ``self.generator`` (seed 0).
    """

    def __init__(self, params: EfficientNetParams, context: ModelContext) -> None:
        super().__init__()
        require_kind(context, ("files", "pixels"), "efficientnet_lite0",
                     "use type projection or gpo for precomputed features")
        self.params = params
        self.backbone = pretrained_efficientnet_lite0().requires_grad_(not params.freeze)
        self.backbone._fc.requires_grad_(False)  # the ImageNet classifier is not used
        self.head = ProjectionHead(FEATURE_DIM, context.embed_dim, params.hidden)
        self.generator = torch.Generator().manual_seed(0)

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        return pixel_batch(store, index, self.params.image_size, IMAGENET_MEAN, IMAGENET_STD,
                           train and self.params.augment, self.generator, self.params.crop_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with self.backbone_grad():
            features = self.backbone.features(images)
        return self.head(features)
