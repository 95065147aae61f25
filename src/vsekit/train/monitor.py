"""True false-negative rate of the negatives a loss chooses, where relevance is complete.

On the built-in synthetic dataset the generator knows every caption → image match, so we
can count how often a training negative is really a positive. Losses that sample
negatives (FNE) expose their choice as ``last_picks``; for every other loss the monitor
counts the hardest in-batch negative, which is the one max violation (VSE++) trains on.
"""

from __future__ import annotations

import numpy as np
import torch

from vsekit.data.dataset import Batch
from vsekit.losses.base import same_image_mask
from vsekit.losses.stats import hardest_negatives


def hardest_in_batch(image_emb: torch.Tensor, text_emb: torch.Tensor,
                     image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch columns of the hardest same-image-masked negative per anchor, both directions.

    Returns (caption column per image anchor [B], image row per caption anchor [B]).
    """
    sims = (image_emb @ text_emb.T).detach()
    mask = same_image_mask(image_ids, image_ids)
    return hardest_negatives(sims, mask)[1], hardest_negatives(sims.T, mask.T)[1]


class FalseNegativeMonitor:
    """Accumulates, without host syncs, how many chosen negatives truly match their anchor.

    ``relevance`` is bool [N_img, N_cap] of the training split (complete relevance).
    """

    def __init__(self, relevance: np.ndarray, device: torch.device) -> None:
        self.relevance = torch.from_numpy(np.ascontiguousarray(relevance)).to(device)
        self.reset()

    def reset(self) -> None:
        self.hits = {"i2t": torch.zeros((), device=self.relevance.device),
                     "t2i": torch.zeros((), device=self.relevance.device)}
        self.count = {"i2t": torch.zeros((), device=self.relevance.device),
                      "t2i": torch.zeros((), device=self.relevance.device)}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The counts since the last reset (checkpointed so a resumed epoch keeps them)."""
        return {"hits": dict(self.hits), "count": dict(self.count)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        device = self.relevance.device
        self.hits = {k: v.to(device) for k, v in state["hits"].items()}
        self.count = {k: v.to(device) for k, v in state["count"].items()}

    def _add(self, direction: str, images: torch.Tensor, captions: torch.Tensor) -> None:
        valid = (images >= 0) & (captions >= 0)
        truly = self.relevance[images.clamp(min=0), captions.clamp(min=0)] & valid
        self.hits[direction] += truly.sum()
        self.count[direction] += valid.sum()

    @torch.no_grad()
    def update(self, batch: Batch, image_emb: torch.Tensor, text_emb: torch.Tensor,
               picks: dict | None) -> None:
        """Count this step's chosen negatives (``picks`` from the loss, or the hardest ones)."""
        if picks:
            i2t, t2i = picks["i2t"], picks["t2i"]
            self._add("i2t", batch.image_index, i2t.caption_index)
            self._add("t2i", t2i.image_index, batch.caption_index)
            return
        cap_col, img_row = hardest_in_batch(image_emb, text_emb, batch.image_ids)
        self._add("i2t", batch.image_index, batch.caption_index[cap_col])
        self._add("t2i", batch.image_index[img_row], batch.caption_index)

    def summary(self) -> dict[str, float]:
        """Percent of chosen negatives that are true matches, per direction, since reset."""
        return {f"true_fn_rate_{d}": float(100 * self.hits[d] / self.count[d].clamp(min=1))
                for d in ("i2t", "t2i")}
