"""``hf_vit``: a Vision Transformer loaded offline with HuggingFace transformers.

The FNE paper's image side is ViT-B/16 at 384 px (``google/vit-base-patch16-384``) with the
mean of all last-layer tokens (CLS and patches) as the 768-d embedding and no projection head.
vsekit never downloads weights: the model must be a local folder or already be in the local
Hugging Face cache, otherwise building the encoder fails with one line saying how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from vsekit.data.dataset import ImageStore
from vsekit.data.images import HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD
from vsekit.data.randaugment import RandAugment
from vsekit.errors import VsekitError
from vsekit.models.base import IMAGE_ENCODERS, FreezableBackbone, ImageEncoder, ModelContext
from vsekit.models.image import check_positive, pixel_batch, require_kind
from vsekit.models.text import resolve_model_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALISATIONS = {
    "half": (HALF_MEAN_STD, HALF_MEAN_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}


@dataclass
class ViTParams:
    """A ViT from ``model`` (local folder or cached Hugging Face repo id).

    ``pooling``: "mean" of all last-layer tokens, CLS included (FNE), or "cls".
    ``project``: a Linear hidden → embed_dim (false: embed_dim must equal the hidden size, as
    in FNE). ``image_size``: input side in pixels (must match the model's position
    embeddings). ``normalize``: pixel mean/std ("half" = 0.5, "imagenet", "clip" as FNE).
    ``augment``: random resized crop (area ``crop_scale``) + horizontal flip in training,
    followed by RandAugment when ``randaugment_ops`` > 0 (FNE: 2 ops at magnitude 7, see
    :mod:`vsekit.data.randaugment`).
    """

    model: str = "google/vit-base-patch16-384"
    freeze: bool = False
    pooling: Literal["mean", "cls"] = "mean"
    project: bool = True
    image_size: int = 384
    normalize: Literal["half", "imagenet", "clip"] = "half"
    augment: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)
    randaugment_ops: int = 0
    randaugment_magnitude: float = 7.0

    def validate(self, where: str) -> None:
        check_positive(where, image_size=self.image_size)
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise VsekitError(f"{where}.crop_scale must be two numbers 0 < low <= high <= 1, "
                              f"got {list(self.crop_scale)}")
        RandAugment(self.randaugment_ops, self.randaugment_magnitude)
        resolve_model_path(self.model, role="image")


@IMAGE_ENCODERS.register("hf_vit", ViTParams)
class ViTEncoder(FreezableBackbone, ImageEncoder):
    """Images [B, 3, S, S] → ViT → token pooling → [B, embed_dim].

    Augmentation draws from ``self.generator`` (seed 0; the loader reseeds it per batch).
    """

    def __init__(self, params: ViTParams, context: ModelContext) -> None:
        super().__init__()
        require_kind(context, ("files", "pixels"), "hf_vit",
                     "use type projection or gpo for precomputed features")
        from transformers import AutoModel

        path = resolve_model_path(params.model, role="image")
        try:
            self.backbone = AutoModel.from_pretrained(path, local_files_only=True,
                                                      dtype=torch.float32,
                                                      add_pooling_layer=False)
        except (OSError, ValueError, TypeError) as exc:
            raise VsekitError(f"cannot load the image model from {str(path)!r}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
        self.params = params
        self.backbone.requires_grad_(not params.freeze)
        hidden = self.backbone.config.hidden_size
        expected = getattr(self.backbone.config, "image_size", params.image_size)
        if expected != params.image_size:
            raise VsekitError(f"image model {params.model!r} expects {expected}-px inputs but "
                              f"image_size is {params.image_size}; set image_size: {expected}")
        if not params.project and context.embed_dim != hidden:
            raise VsekitError(f"image encoder 'hf_vit' with project: false outputs {hidden}-d "
                              f"embeddings, but model.embed_dim is {context.embed_dim}; set "
                              f"embed_dim to {hidden} or project: true")
        self.head = nn.Linear(hidden, context.embed_dim) if params.project else None
        self.generator = torch.Generator().manual_seed(0)
        self.randaugment = (RandAugment(params.randaugment_ops, params.randaugment_magnitude)
                            if params.randaugment_ops else None)
        self.train()

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        mean, std = NORMALISATIONS[self.params.normalize]
        return pixel_batch(store, index, self.params.image_size, mean, std,
                           train and self.params.augment, self.generator, self.params.crop_scale,
                           self.randaugment)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with self.backbone_grad():
            tokens = self.backbone(pixel_values=images).last_hidden_state
        pooled = tokens.mean(1) if self.params.pooling == "mean" else tokens[:, 0]
        return pooled if self.head is None else self.head(pooled)
