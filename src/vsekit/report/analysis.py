"""What the report computes with a trained model: in-batch similarities for FNE's histograms,
pseudo labels against model similarities for BCLS. Pure tensor functions first, then the
run-directory readers that feed them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsekit.config import Config
from vsekit.data.dataset import RetrievalSplit
from vsekit.eval.encode import encode_split
from vsekit.eval.graded import kendall_tau_b, pseudo_relevance
from vsekit.eval.run import load_run_model
from vsekit.labels import load_cache
from vsekit.losses import LOSSES
from vsekit.losses.base import same_image_mask
from vsekit.losses.bcls import BCLSParams
from vsekit.losses.fne import FNEParams
from vsekit.losses.stats import SimilarityStats, hardest_negatives
from vsekit.models.vse import VSEModel
from vsekit.report.plots import Gaussians
from vsekit.train import checkpoint as ckpt
from vsekit.train.run_dir import CHECKPOINTS

STATS_BUFFER = "stats.moments"


# --------------------------------------------------------------------------- pure functions


def inbatch_similarities(image_emb: torch.Tensor, text_emb: torch.Tensor,
                         caption_to_image: torch.Tensor, image_groups: torch.Tensor,
                         batch_size: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and hardest in-batch negative similarities over random caption batches.

    Captions are shuffled with ``generator`` and cut into batches of ``batch_size`` pairs
    (caption j with its image), as training draws them; an incomplete last batch is dropped
    unless it is the only one. In each batch of B pairs: the B positives s(i, i), and per
    anchor the hardest similarity to another image's item (same-image pairs masked), image→
    text then text→image.

    Args:
        image_emb: [N_img, D] unit vectors; text_emb: [N_cap, D] unit vectors.
        caption_to_image: int64 [N_cap]; image_groups: int64 [N_img] (equal = same image).

    Returns:
        (positives [P], negatives [M]) float32; negatives of anchors whose batch holds no
        other image are left out.
    """
    order = torch.randperm(len(text_emb), generator=generator)
    n_full = max(len(order) // batch_size, 1)
    positives, negatives = [], []
    for k in range(n_full):
        rows = order[k * batch_size:(k + 1) * batch_size]
        images = caption_to_image[rows]
        sims = image_emb[images] @ text_emb[rows].T
        mask = same_image_mask(image_groups[images], image_groups[images])
        positives.append(sims.diagonal())
        negatives += [hardest_negatives(sims, mask).values, hardest_negatives(sims.T, mask.T).values]
    negatives = torch.cat(negatives)
    return torch.cat(positives).float(), negatives[torch.isfinite(negatives)].float()


def gaussians_from_moments(moments: torch.Tensor) -> Gaussians | None:
    """FNE's Gaussians from a ``SimilarityStats.moments`` buffer [2, 3]; None when fewer than
    two positives or negatives were seen (no variance yet)."""
    stats = SimilarityStats()
    stats.moments.copy_(moments)
    if float(stats.moments[:, 0].min()) < 2:
        return None
    return Gaussians(float(stats.pos_mean), float(stats.pos_var), float(stats.neg_mean),
                     float(stats.neg_var), float(stats.count))


# --------------------------------------------------------------------------- config readers


def loss_params(config: Config) -> dict[str, Any]:
    """Loss name → params for the run's loss and, for ``bcls``, its base loss too."""
    name, params = LOSSES.parse(config.loss, "loss")
    found = {name: params}
    if isinstance(params, BCLSParams):
        base_name, base_params = params.base_spec()
        found[base_name] = base_params
    return found


def fne_params(config: Config) -> FNEParams | None:
    """The FNE parameters if the run trains with FNE (directly or as BCLS's base)."""
    return loss_params(config).get("fne")


def bcls_params(config: Config) -> BCLSParams | None:
    """The BCLS parameters if the run trains with BCLS and its Kendall term (λ > 0)."""
    params = loss_params(config).get("bcls")
    return params if params is not None and params.lam > 0 else None


# --------------------------------------------------------------------------- run readers


@dataclass
class Sample:
    """A sample of a split's images with all their captions, encoded by a model.

    Attributes:
        split: the sampled sub-split; caption_rows: int64 [N_cap] rows of its captions in the
            full split; image_emb [N_img, D], text_emb [N_cap, D]: float32 unit vectors.
    """

    split: RetrievalSplit
    caption_rows: np.ndarray
    image_emb: torch.Tensor
    text_emb: torch.Tensor

    @property
    def sims(self) -> torch.Tensor:
        """[N_img, N_cap] model similarities."""
        return self.image_emb @ self.text_emb.T


def encode_sample(model: VSEModel, split: RetrievalSplit, n_images: int, seed: int,
                  batch_size: int) -> Sample:
    """Encode ``n_images`` images of ``split`` (seeded choice; all if fewer) and their captions."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(split.n_images, min(n_images, split.n_images), replace=False))
    sub = split.subset_images(chosen)
    caption_rows = np.flatnonzero(np.isin(split.caption_to_image, chosen))
    device = next(model.parameters()).device
    image_emb, text_emb = encode_split(model, sub, batch_size=batch_size, device=device)
    return Sample(sub, caption_rows, image_emb.cpu(), text_emb.cpu())


def last_model(run_dir: Path, config: Config, split: RetrievalSplit
               ) -> tuple[VSEModel, dict[str, Any], str]:
    """The run's newest step checkpoint: (model, loss state, its file name)."""
    path, state = ckpt.latest_good_checkpoint(run_dir / CHECKPOINTS)
    model = load_run_model(run_dir, config, split, "last")
    return model, state.get("loss", {}), path.name


def fne_stats(loss_state: dict[str, Any]) -> Gaussians | None:
    """FNE's Gaussians from a checkpoint's loss state (``stats.moments``, also under BCLS's
    ``base.``); None when absent or empty."""
    for key, value in loss_state.items():
        if key.endswith(STATS_BUFFER) and isinstance(value, torch.Tensor):
            return gaussians_from_moments(value)
    return None


def fne_histograms(sample: Sample, batch_size: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(positives, hardest negatives) as numpy, from in-batch similarities of ``sample``."""
    generator = torch.Generator().manual_seed(seed)
    pos, neg = inbatch_similarities(
        sample.image_emb, sample.text_emb, torch.from_numpy(sample.split.caption_to_image),
        torch.from_numpy(sample.split.image_groups), batch_size, generator)
    return pos.numpy(), neg.numpy()


@dataclass
class LabelPairs:
    """Pseudo labels and model similarities of a sample's (image, caption) pairs, [Q, N]."""

    labels: np.ndarray
    sims: np.ndarray
    ground_truth: np.ndarray
    tau: float


def label_pairs(sample: Sample, full_split: RetrievalSplit, params: BCLSParams) -> LabelPairs:
    """BCLS's pseudo labels (the cached caption embeddings it trained on) against the model's
    similarities for every (image, caption) pair of ``sample``; ``tau`` is the mean Kendall
    τ-b over image queries (rows where either side is constant left out)."""
    emb = load_cache(full_split, params.label_cache_dir, params.label_encoder)
    labels = pseudo_relevance(emb[sample.caption_rows], sample.split.caption_to_image)
    sims = sample.sims.numpy()
    taus = kendall_tau_b(sims, labels)
    n_images = sample.split.n_images
    truth = sample.split.caption_to_image[None, :] == np.arange(n_images)[:, None]
    tau = float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan")
    return LabelPairs(labels, sims, truth, tau)
