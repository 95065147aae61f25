"""Outputs of a text transformer's fixed lower layers, computed once per caption.

With ``train_layers: k`` only the top k layers of the transformer train; the embeddings and the
layers below them never change. Run in eval mode (no dropout), their output for a caption is
the same at every step, so :func:`compute_lower_states` computes it once per caption of a split
and :class:`LowerStates` serves padded batches of it; :func:`run_layers` then runs only the
trainable top layers on a batch. A step then costs the forward and backward of k layers instead
of a forward through all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] (1 real token, 0 padding) → [B, 1, 1, L] additive attention mask: 0 where a
    token may be attended to, the dtype's most negative value at padding."""
    blocked = 1 - attention_mask[:, None, None, :].to(dtype)
    return blocked * torch.finfo(dtype).min


def run_layers(layers: Sequence[nn.Module], hidden: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Run transformer ``layers`` (BERT-style: ``layer(hidden, attention_mask=...)``) on
    hidden states [B, L, H] with token mask [B, L]; returns [B, L, H]."""
    mask = additive_mask(attention_mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@dataclass
class LowerStates:
    """Lower-layer outputs of every caption of one split, stored without padding.

    Attributes:
        captions: the split's caption list; its identity tells which split this is.
        states: float [T, H], the T real tokens of all captions, caption after caption.
        offsets: int64 [N + 1]; caption i's tokens are ``states[offsets[i]:offsets[i + 1]]``.
    """

    captions: list[str]
    states: torch.Tensor
    offsets: torch.Tensor

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions ``rows`` [B] → (hidden [B, L, H] zero-padded to the longest, mask [B, L])."""
        rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        start = self.offsets[rows_t]
        lengths = self.offsets[rows_t + 1] - start
        longest = int(lengths.max()) if len(rows_t) else 0
        steps = torch.arange(longest)
        mask = (steps[None, :] < lengths[:, None]).long()
        positions = (start[:, None] + steps[None, :]).clamp(max=max(len(self.states) - 1, 0))
        hidden = self.states[positions] * mask[..., None].to(self.states.dtype)
        return hidden, mask


@torch.no_grad()
def compute_lower_states(embeddings: nn.Module, layers: Sequence[nn.Module], tokenize: Tokenize,
                         captions: list[str], chunk: int = 256) -> LowerStates:
    """Embeddings + ``layers`` applied to every caption, in chunks of captions of similar
    length, with the modules in eval mode (restored after): the :class:`LowerStates` of
    ``captions``. ``tokenize`` must pad on the right."""
    if not captions:
        return LowerStates(captions=captions, states=torch.empty(0, 0),
                           offsets=torch.zeros(1, dtype=torch.int64))
    tokens = tokenize(captions)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    lengths = mask.sum(1)
    offsets = torch.zeros(len(captions) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    modes = [(m, m.training) for m in (embeddings, *layers)]
    for module, _ in modes:
        module.eval()
    states = torch.empty(0, 0)
    try:
        for rows in lengths.argsort().split(chunk):
            longest = int(lengths[rows].max())
            rows_mask = mask[rows, :longest]
            hidden = run_layers(layers, embeddings(input_ids=ids[rows, :longest]), rows_mask)
            if not states.numel():
                states = hidden.new_empty(int(offsets[-1]), hidden.shape[-1])
            real = rows_mask.bool()
            positions = offsets[rows][:, None] + torch.arange(longest)[None, :]
            states[positions[real]] = hidden[real]
    finally:
        for module, mode in modes:
            module.train(mode)
    return LowerStates(captions=captions, states=states, offsets=offsets)
