"""The visual-semantic embedding model: one image encoder, one text encoder, L2-normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsekit.config import ModelConfig
from vsekit.data.dataset import Batch, RetrievalSplit
from vsekit.models.base import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ImageEncoder,
    ModelContext,
    TextEncoder,
)


class VSEModel(nn.Module):
    """Dual encoder mapping images and captions into one unit-norm space of size D."""

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image inputs (see the encoder's ``prepare``) → [B, D] unit vectors."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prepared text inputs → [B, D] unit vectors."""
        return F.normalize(self.text_encoder(**text).float(), dim=-1)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of B pairs → (image embeddings [B, D], text embeddings [B, D])."""
        return self.encode_image(batch.images), self.encode_text(batch.text)


def context_from_split(config: ModelConfig, split: RetrievalSplit, with_captions: bool = True
                       ) -> ModelContext:
    """The :class:`ModelContext` for data shaped like ``split`` (its captions build
    vocabularies unless ``with_captions`` is False, e.g. when a checkpoint carries them)."""
    cap_dim = None if split.caption_features is None else int(split.caption_features.shape[-1])
    return ModelContext(
        embed_dim=config.embed_dim,
        image_kind=split.images.kind,
        image_feature_dim=split.images.feature_dim,
        caption_feature_dim=cap_dim,
        train_captions=list(split.captions) if with_captions else None,
    )


def build_model(config: ModelConfig, context: ModelContext) -> VSEModel:
    """Build both encoders from their config sections (``{type: NAME, **params}``)."""
    image_name, image_params = IMAGE_ENCODERS.parse(config.image, "model.image")
    text_name, text_params = TEXT_ENCODERS.parse(config.text, "model.text")
    image = IMAGE_ENCODERS.build(image_name, image_params, context=context)
    text = TEXT_ENCODERS.build(text_name, text_params, context=context)
    return VSEModel(image, text)
