"""Encoders and the registries that build them from a config's ``model`` section.

Importing this package registers every encoder: image ``projection``, ``gpo``, ``cnn``,
``efficientnet_lite0``, ``hf_vit``; text ``bigru``, ``hf``, ``precomputed``.
"""

from vsekit.models import image, text, vit  # noqa: F401  (imported to register the encoders)
from vsekit.models.base import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ImageEncoder,
    ModelContext,
    TextEncoder,
)
from vsekit.models.vse import VSEModel, build_model

__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "ImageEncoder", "ModelContext", "TextEncoder", "VSEModel",
           "build_model"]
