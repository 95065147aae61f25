"""A ring buffer of momentum features with their image ids (FNE memory, methods.md §1.2).

Unlike the reference, any size Q works: a batch wraps around the end, and a batch larger than
the queue keeps only its last Q pairs (what writing them one by one would leave).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsekit.errors import VsekitError


class MemoryQueue(nn.Module):
    """Q slots of (image feature, caption feature, image id, image index, caption index).

    Buffers: ``image`` and ``text`` float32 [Q, D] (start as seeded random unit vectors),
    ``ids`` int64 [Q] (dense image ids used for masking; −1, which matches no real id, until
    written), ``image_index`` and ``caption_index`` int64 [Q] (the split rows a slot came from,
    −1 until written; for diagnostics such as the true false-negative rate), and ``ptr``
    (0-d int64, the next slot to write). Q = 0 is allowed: the queue is then always empty.
    """

    image: torch.Tensor
    text: torch.Tensor
    ids: torch.Tensor
    image_index: torch.Tensor
    caption_index: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 0 or dim < 1:
            raise VsekitError(f"a memory queue needs size >= 0 and dim >= 1, got size {size} and "
                              f"dim {dim}; fix loss.queue_size or model.embed_dim")
        gen = torch.Generator().manual_seed(seed)
        for name in ("image", "text"):
            self.register_buffer(name, F.normalize(torch.randn(size, dim, generator=gen), dim=1))
        for name in ("ids", "image_index", "caption_index"):
            self.register_buffer(name, torch.full((size,), -1, dtype=torch.int64))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))

    @property
    def size(self) -> int:
        """Q, the number of slots."""
        return self.ids.shape[0]

    @property
    def dim(self) -> int:
        """D, the feature size."""
        return self.image.shape[1]

    @torch.no_grad()
    def write(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor,
              image_index: torch.Tensor, caption_index: torch.Tensor) -> None:
        """Write B pairs at the pointer, wrapping around, and advance it by B modulo Q.

        image, text: [B, D] features; ids, image_index, caption_index: int [B]. No host sync.
        """
        batch = ids.shape[0]
        if self.size == 0 or batch == 0:
            return
        first = max(0, batch - self.size)  # older rows of an oversized batch are overwritten
        rows = torch.arange(first, batch, device=self.ptr.device)
        slots = (self.ptr + rows) % self.size
        columns = {"image": image, "text": text, "ids": ids, "image_index": image_index,
                   "caption_index": caption_index}
        for name, values in columns.items():
            buffer = getattr(self, name)
            buffer.index_copy_(0, slots, values[first:].detach().to(buffer.dtype))
        self.ptr.copy_((self.ptr + batch) % self.size)
