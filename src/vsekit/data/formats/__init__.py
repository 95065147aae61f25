"""On-disk dataset layouts, each registered by name in :data:`DATA_FORMATS`.

A format factory takes its params dataclass and returns ``dict[str, RetrievalSplit]``
(split name → split), e.g. ``{"train": ..., "dev": ..., "test": ...}``.
"""

from vsekit.registry import Registry

DATA_FORMATS = Registry("data format", key="format")

# Importing the modules registers the formats.
from vsekit.data import synthetic  # noqa: E402,F401
from vsekit.data.formats import flickr8k, karpathy, precomp  # noqa: E402,F401
