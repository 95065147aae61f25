"""Embed images and texts that are not (or not only) in a split with a run's trained model.

What an image encoder takes decides how new images reach it: raw-image encoders (``cnn``,
``efficientnet_lite0``) read the files; encoders on precomputed features (``projection``)
get EfficientNet-Lite0 features computed from the files the way ``vsekit features`` and the
Flickr8k pack compute them, which is only right for runs trained on such 1280-d features.
A ``precomputed`` text encoder gets new text embedded by the sentence encoder that made its
training features (:data:`CAPTION_FEATURE_ENCODERS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.text import UNK_ID, tokenize
from vsekit.errors import VsekitError, require
from vsekit.models.base import ModelContext
from vsekit.models.efficientnet import FEATURE_DIM
from vsekit.models.text import BiGRUEncoder, PrecomputedTextEncoder
from vsekit.models.vse import VSEModel

# data format → the sentence encoder (a vsekit.labels name) that made its caption features
CAPTION_FEATURE_ENCODERS = {"flickr8k": "minilm"}


@dataclass
class RunModel:
    """A run's trained model (eval mode), the shape of its training data and its data section.

    ``context`` has no training captions; ``data`` is the run config's ``data`` section.
    """

    model: VSEModel
    context: ModelContext
    data: dict[str, Any]
    batch_size: int = 256
    progress: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_meta(self) -> dict[str, Any]:
        """The data shape as a JSON object (what :func:`shaped_split` takes back)."""
        return {k: v for k, v in asdict(self.context).items() if k != "train_captions"}


def shaped_split(context: ModelContext, captions: list[str],
                 caption_features: np.ndarray | None = None) -> RetrievalSplit:
    """A split holding only ``captions`` (and their ``caption_features`` [N, D_t]), shaped like
    the data of ``context``: its one image is a placeholder of the run's image kind and
    feature size, which is all a model is built from; every caption points to it."""
    kind = context.image_kind
    if kind == "features":
        store = ImageStore("features", features=np.zeros((1, context.image_feature_dim),
                                                         dtype=np.float32))
    elif kind == "pixels":
        store = ImageStore("pixels", pixels=np.zeros((1, 1, 1, 3), dtype=np.uint8))
    else:
        store = ImageStore("files", files=[Path("placeholder")])
    if caption_features is None and context.caption_feature_dim is not None:
        caption_features = np.zeros((len(captions), context.caption_feature_dim), np.float32)
    return RetrievalSplit(name="query", images=store, captions=list(captions),
                          caption_to_image=np.zeros(len(captions), dtype=np.int64),
                          image_ids=["placeholder"], caption_features=caption_features)


@torch.no_grad()
def encode_images(run: RunModel, store: ImageStore, index: np.ndarray | None = None
                  ) -> np.ndarray:
    """Embeddings of images ``index`` (default all) of ``store``: float32 [N, D], unit rows."""
    index = np.arange(len(store)) if index is None else np.asarray(index, dtype=np.int64)
    chunks = []
    for start in tqdm(range(0, len(index), run.batch_size), desc="encode images", unit="batch",
                      disable=not run.progress, leave=False):
        batch = index[start:start + run.batch_size]
        images = run.model.image_encoder.prepare(store, batch, False).to(run.device)
        chunks.append(run.model.encode_image(images).cpu())
    return torch.cat(chunks).numpy()


@torch.no_grad()
def encode_captions(run: RunModel, split: RetrievalSplit, index: np.ndarray | None = None
                    ) -> np.ndarray:
    """Embeddings of captions ``index`` (default all) of ``split``: float32 [N, D]."""
    index = np.arange(split.n_captions) if index is None else np.asarray(index, dtype=np.int64)
    chunks = []
    for start in tqdm(range(0, len(index), run.batch_size), desc="encode captions",
                      unit="batch", disable=not run.progress, leave=False):
        batch = index[start:start + run.batch_size]
        text = {k: v.to(run.device)
                for k, v in run.model.text_encoder.prepare(split, batch).items()}
        chunks.append(run.model.encode_text(text).cpu())
    return torch.cat(chunks).numpy()


def sentence_features(run: RunModel, texts: list[str]) -> np.ndarray:
    """Caption features [N, D_t] for new ``texts``, by the sentence encoder that made the
    run's training caption features; VsekitError where vsekit does not know it."""
    from vsekit.labels import build_caption_embeddings

    data_format = run.data.get("format")
    name = CAPTION_FEATURE_ENCODERS.get(data_format)
    if name is None:
        raise VsekitError(f"the run's text encoder reads precomputed caption features of data "
                          f"format {data_format!r}, and vsekit does not know which sentence "
                          "encoder made them, so it cannot embed new text; use a run with a "
                          "bigru or hf text encoder")
    features = build_caption_embeddings(texts, name, batch_size=run.batch_size,
                                        progress=run.progress)
    require(features.shape[1] == run.context.caption_feature_dim,
            f"the {name} sentence encoder gives {features.shape[1]}-d features but the run was "
            f"trained on {run.context.caption_feature_dim}-d caption features; the data's "
            "features come from another encoder")
    return features


def encode_texts(run: RunModel, texts: list[str]) -> np.ndarray:
    """Embeddings of new ``texts`` (captions or queries): float32 [N, D]."""
    features = (sentence_features(run, texts)
                if isinstance(run.model.text_encoder, PrecomputedTextEncoder) else None)
    return encode_captions(run, shaped_split(run.context, texts, features))


def check_query_words(run: RunModel, text: str) -> None:
    """VsekitError when a word-level (bigru) model knows none of the words of ``text``: its
    embedding would be that of ``<unk>`` alone."""
    encoder = run.model.text_encoder
    if isinstance(encoder, BiGRUEncoder):
        words = tokenize(text)
        require(any(encoder.vocab.id(word) != UNK_ID for word in words),
                f"none of the {len(words)} words of the query is in the run's vocabulary "
                f"({len(encoder.vocab) - 2} words from its training captions); use words like "
                "those of the training captions")


def image_file_store(run: RunModel, paths: list[Path]) -> ImageStore:
    """What the run's image encoder takes for image files: the files themselves, or their
    EfficientNet-Lite0 features when the run was trained on 1280-d precomputed features."""
    if run.context.image_kind != "features":
        return ImageStore("files", files=list(paths))
    dim = run.context.image_feature_dim
    require(dim == FEATURE_DIM,
            f"the run's image encoder takes {dim}-d precomputed features, so image files cannot "
            f"be embedded (vsekit computes {FEATURE_DIM}-d EfficientNet-Lite0 features only); "
            "pass a .npy features file or a split name")
    from vsekit.models.features import image_file_features

    return ImageStore("features", features=image_file_features(
        list(paths), batch_size=min(run.batch_size, 64), device=run.device,
        progress=run.progress))
