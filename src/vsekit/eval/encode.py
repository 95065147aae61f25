"""Encode a split once (batched, no grad) and score it with the retrieval metrics, on the
whole split or by a standard protocol (:mod:`vsekit.eval.protocols`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vsekit.data.dataset import RetrievalSplit
from vsekit.errors import require
from vsekit.eval.eccv import coco_5k_ids, eccv_from_rankings, eccv_metrics, list_lengths
from vsekit.eval.graded import graded_metrics, pseudo_relevance
from vsekit.eval.metrics import metrics_from_ranks, relevance_recall, retrieval_metrics
from vsekit.eval.protocols import Fold, average_metrics, protocol_folds
from vsekit.eval.streaming import check_half, streaming_ranks
from vsekit.models.vse import VSEModel

IN_MEMORY_LIMIT = 1 << 27  # scores (512 MiB in float32): larger folds are streamed


@torch.no_grad()
def encode_split(model: VSEModel, split: RetrievalSplit, *, batch_size: int = 256,
                 device: torch.device | str = "cpu", progress: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings [N_img, D], caption embeddings [N_cap, D]), float32 on ``device``."""
    was_training = model.training
    model.eval()
    try:
        image_chunks, text_chunks = [], []
        bar = tqdm(total=split.n_images + split.n_captions, desc=f"encode {split.name}",
                   unit="item", disable=not progress, leave=False)
        for start in range(0, split.n_images, batch_size):
            index = np.arange(start, min(start + batch_size, split.n_images))
            images = model.image_encoder.prepare(split.images, index, False).to(device)
            image_chunks.append(model.encode_image(images))
            bar.update(len(index))
        for start in range(0, split.n_captions, batch_size):
            index = np.arange(start, min(start + batch_size, split.n_captions))
            text = {k: v.to(device) for k, v in model.text_encoder.prepare(split, index).items()}
            text_chunks.append(model.encode_text(text))
            bar.update(len(index))
        bar.close()
        return torch.cat(image_chunks), torch.cat(text_chunks)
    finally:
        model.train(was_training)


def evaluate_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor, split: RetrievalSplit,
                        *, chunk_size: int | None = None,
                        pseudo_caption_emb: np.ndarray | None = None) -> dict[str, float]:
    """Binary R@K / medr / meanr / rsum; where the split knows it, complete-relevance recall and
    Kendall τ-b / nDCG against the true graded relevance (``graded_*``); with
    ``pseudo_caption_emb`` [N_cap, D] (a sentence encoder's caption embeddings), the same
    graded metrics against pseudo-label relevance (``pseudo_*``, a proxy)."""
    return evaluate_similarities(image_emb @ text_emb.T, split, chunk_size=chunk_size,
                                 pseudo_caption_emb=pseudo_caption_emb)


def evaluate_similarities(sims: torch.Tensor, split: RetrievalSplit, *,
                          chunk_size: int | None = None,
                          pseudo_caption_emb: np.ndarray | None = None) -> dict[str, float]:
    """:func:`evaluate_embeddings` from the similarity matrix [N_img, N_cap] of ``split``."""
    metrics = retrieval_metrics(sims, split.caption_to_image, chunk_size=chunk_size)
    if split.relevance is not None:
        metrics.update(relevance_recall(sims, split.relevance, chunk_size=chunk_size))
    if split.graded_relevance is not None:
        metrics.update(graded_metrics(sims, split.graded_relevance, prefix="graded_"))
    if pseudo_caption_emb is not None:
        pseudo = pseudo_relevance(pseudo_caption_emb, split.caption_to_image)
        metrics.update(graded_metrics(sims, pseudo, prefix="pseudo_"))
        if split.graded_relevance is not None:  # how good the pseudo labels themselves are
            metrics.update(graded_metrics(pseudo, split.graded_relevance, prefix="labels_"))
    return metrics


def evaluate(model: VSEModel, split: RetrievalSplit, *, batch_size: int = 256,
             chunk_size: int | None = None, device: torch.device | str = "cpu",
             progress: bool = False, pseudo_caption_emb: np.ndarray | None = None
             ) -> dict[str, float]:
    """Encode ``split`` with ``model`` and return its metrics (see :func:`evaluate_embeddings`)."""
    image_emb, text_emb = encode_split(model, split, batch_size=batch_size, device=device,
                                       progress=progress)
    return evaluate_embeddings(image_emb, text_emb, split, chunk_size=chunk_size,
                               pseudo_caption_emb=pseudo_caption_emb)


@dataclass
class ProtocolResult:
    """Metrics of one protocol: ``metrics`` averaged over ``folds`` (the per-fold metrics),
    plus ECCV / CxC (whole 5K split) and bfloat16-check keys where asked; ``streamed`` tells
    whether the similarities were streamed (:mod:`vsekit.eval.streaming`) or held."""

    protocol: str
    metrics: dict[str, float]
    folds: list[dict[str, float]]
    streamed: bool


def _fold_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, split: RetrievalSplit,
                  fold: Fold, *, streamed: bool, half: bool, eccv: bool,
                  chunk_size: int | None, pseudo_caption_emb: np.ndarray | None,
                  progress: bool) -> dict[str, float]:
    """Metrics of one fold: its similarity matrix held (all metrics the split supports) or
    streamed (binary metrics); ECCV / CxC on the fold's lists where asked."""
    whole = len(fold.images) == split.n_images and len(fold.captions) == split.n_captions
    images = image_emb if whole else image_emb[torch.as_tensor(fold.images)]
    texts = text_emb if whole else text_emb[torch.as_tensor(fold.captions)]
    if not streamed:
        sims = images @ texts.T
        sub = split if whole else split.subset_images(fold.images)
        pseudo = None if pseudo_caption_emb is None else pseudo_caption_emb[fold.captions]
        metrics = evaluate_similarities(sims, sub, chunk_size=chunk_size,
                                        pseudo_caption_emb=pseudo)
        if eccv:
            metrics.update(eccv_metrics(sims, *coco_5k_ids(split)))
        return metrics
    metrics = check_half(images, texts, fold.caption_to_image, progress=progress) if half else {}
    k_captions, k_images = list_lengths() if eccv else (0, 0)
    found = streaming_ranks(images, texts, fold.caption_to_image,
                            top_k=max(k_captions, k_images), half=half, progress=progress)
    metrics.update(metrics_from_ranks(found.i2t_ranks, found.t2i_ranks))
    if eccv:
        metrics.update(eccv_from_rankings(found.i2t_top[:, :k_captions],
                                          found.t2i_top[:, :k_images], *coco_5k_ids(split)))
    return metrics


def protocol_request(split: RetrievalSplit, protocol: str, eccv: bool) -> list[Fold]:
    """The folds of ``protocol`` for ``split``, after checking that ``eccv`` can be computed
    (cheap: call it before encoding to fail early)."""
    folds = protocol_folds(protocol, split.caption_to_image, split.n_images)
    require(not eccv or protocol == "coco-5k",
            f"ECCV Caption and CxC are defined on the whole COCO 5K test split; use "
            f"--protocol coco-5k, not {protocol!r}")
    if eccv:
        coco_5k_ids(split)
    return folds


def evaluate_protocol(image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray,
                      split: RetrievalSplit, protocol: str = "any", *,
                      stream: bool | None = None, half: bool = False, eccv: bool = False,
                      chunk_size: int | None = None,
                      pseudo_caption_emb: np.ndarray | None = None,
                      device: torch.device | str = "cpu", progress: bool = False
                      ) -> ProtocolResult:
    """Metrics of ``split`` under ``protocol`` from its embeddings.

    Args:
        image_emb: float [N_img, D]; text_emb: float [N_cap, D] (the whole split).
        protocol: a name in :data:`vsekit.eval.protocols.PROTOCOLS`.
        stream: stream the similarities (True), hold each fold's matrix (False), or decide
            by size (None: stream above :data:`IN_MEMORY_LIMIT` scores, or with ``half``).
            Streaming gives the binary metrics only (no complete-relevance / graded ones).
        half: bfloat16 similarities (streamed), checked against float32 on sampled queries.
        eccv: add ECCV Caption and CxC metrics (protocol ``coco-5k`` on the COCO 5K split).
        pseudo_caption_emb: [N_cap, D'] for pseudo-label graded metrics (held matrices only).
        device: where held similarity matrices are computed (streaming runs on CPU).

    Raises:
        VsekitError: unknown protocol, a split of the wrong size, ECCV on another protocol or
            split, or options that need the similarity matrix held while streaming.
    """
    folds = protocol_request(split, protocol, eccv)
    largest = max(len(f.images) * len(f.captions) for f in folds)
    streamed = stream if stream is not None else (half or largest > IN_MEMORY_LIMIT)
    require(streamed or not half, "--half needs streaming; drop --no-stream")
    require(not (streamed and pseudo_caption_emb is not None),
            f"pseudo-label metrics need the similarity matrix in memory, but this split "
            f"({largest:,} scores per fold) is streamed; drop --pseudo-labels or --stream")
    place = "cpu" if streamed else device
    image_emb, text_emb = torch.as_tensor(image_emb, device=place), torch.as_tensor(text_emb,
                                                                                 device=place)
    per_fold = [_fold_metrics(image_emb, text_emb, split, fold, streamed=streamed, half=half,
                              eccv=eccv, chunk_size=chunk_size,
                              pseudo_caption_emb=pseudo_caption_emb, progress=progress)
                for fold in folds]
    return ProtocolResult(protocol, average_metrics(per_fold), per_fold, streamed)
