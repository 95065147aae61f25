"""Continuous pseudo labels from caption similarity (BCLS), with an on-disk embedding cache."""

from vsekit.labels.continuous import (
    SentenceEncoder,
    build_caption_embeddings,
    cache_path,
    caption_table,
    continuous_labels,
    default_cache_dir,
    labels_from_table,
    load_cache,
    load_or_build_cache,
    minilm_encoder,
    resolve_encoder,
)

__all__ = [
    "SentenceEncoder",
    "build_caption_embeddings",
    "cache_path",
    "caption_table",
    "continuous_labels",
    "default_cache_dir",
    "labels_from_table",
    "load_cache",
    "load_or_build_cache",
    "minilm_encoder",
    "resolve_encoder",
]
