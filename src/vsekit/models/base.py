"""Encoder interfaces and registries.

An image encoder maps the image payload of a batch to [B, D] embeddings; a text encoder
maps its prepared text inputs to [B, D]. :class:`vsekit.models.vse.VSEModel` L2-normalises
both. Each encoder also knows how to *prepare* its inputs from a split (load features or
pixels, tokenise captions), so datasets stay format-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.registry import Registry

IMAGE_ENCODERS = Registry("image encoder", key="type")
TEXT_ENCODERS = Registry("text encoder", key="type")


@dataclass
class ModelContext:
    """What encoders need to know about the data when they are built.

    Attributes:
        embed_dim: joint embedding size D.
        image_kind: "features", "pixels" or "files".
        image_feature_dim: D_in of precomputed image features (None for pixels/files).
        caption_feature_dim: size of precomputed caption features, if the split has them.
        train_captions: training captions (for vocabularies); may be empty when a saved
            vocabulary is restored from a checkpoint instead.
    """

    embed_dim: int
    image_kind: str
    image_feature_dim: int | None = None
    caption_feature_dim: int | None = None
    train_captions: list[str] | None = None


class FreezableBackbone(nn.Module):
    """Mixin for encoders with a pretrained ``self.backbone`` and ``self.params.freeze``: a
    frozen backbone stays in eval mode when the encoder trains, and runs without autograd."""

    def train(self, mode: bool = True) -> FreezableBackbone:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.params.freeze:
            self.backbone.eval()
        return self

    def backbone_grad(self) -> torch.autograd.grad_mode.set_grad_enabled:
        """Context for calling the backbone: no autograd when it is frozen."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and not self.params.freeze)


class ImageEncoder(nn.Module):
    """Base class: ``prepare`` loads a batch input, ``forward`` maps it to [B, D]."""

    def prepare(self, store: ImageStore, index: np.ndarray, train: bool) -> torch.Tensor:
        """The encoder input for images ``index`` of ``store`` (augmented when ``train``)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TextEncoder(nn.Module):
    """Base class: ``prepare`` tokenises / gathers captions, ``forward`` maps them to [B, D]."""

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors for captions ``caption_index`` of ``split`` (token ids, lengths, masks...)."""
        raise NotImplementedError

    def forward(self, **text: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
