"""The one signature every loss shares, and the loss registry.

A loss is an ``nn.Module`` called as ``loss(image_emb, text_emb, image_ids, **context)``:

- ``image_emb`` [B, D] and ``text_emb`` [B, D]: L2-normalised embeddings of B pairs
  (row i of each belongs to the same pair);
- ``image_ids`` int64 [B]: image identity of each pair; pairs sharing an id are never
  negatives of each other (several captions of one image in a batch);
- ``context``: optional extras for losses that need them (``epoch``, ``step``, batch inputs
  for momentum encoders, continuous labels, ``pairs``: the batch's
  :class:`vsekit.losses.ranking.PairSims` when a wrapping loss already built them...). Losses
  ignore what they do not use.

It returns :class:`LossOutput`: a scalar ``loss`` and a dict of detached diagnostic
tensors (no host sync: the trainer reads them lazily).

Optional hooks the trainer calls when a loss has them: ``bind(model=, train_split=,
config=)`` once, ``on_epoch_start(epoch)``, and ``commit_step()`` after each step it applied
(a stateful loss changes its state there, never in the call itself, so a skipped step
leaves it untouched).

Under DDP (:mod:`vsekit.distributed`) a loss sees the embeddings of this rank's B/W pairs,
compares them with the candidates of the whole global batch and returns this rank's share
of the global loss: the average of the ranks' values, and DDP's averaged gradient, equal
those of one process with the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vsekit.registry import Registry

LOSSES = Registry("loss", key="name")


@dataclass
class LossOutput:
    loss: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


def same_image_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """bool [len(row_ids), len(col_ids)]: True where row and column share an image id."""
    return row_ids[:, None] == col_ids[None, :]
