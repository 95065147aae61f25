"""Encode a split once (batched, no grad) and score it with the retrieval metrics."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from vsekit.data.dataset import RetrievalSplit
from vsekit.eval.graded import graded_metrics, pseudo_relevance
from vsekit.eval.metrics import relevance_recall, retrieval_metrics
from vsekit.models.vse import VSEModel


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
    sims = image_emb @ text_emb.T
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
