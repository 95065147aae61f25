"""From a backbone's per-region / per-token outputs to one embedding per item.

- :func:`masked_mean`: mean over the valid positions of a padded set.
- :class:`GPO`: the Generalized Pooling Operator of VSE∞ (Chen et al., CVPR 2021).
- :class:`ProjectionHead`: the linear (optionally + residual MLP) map into the joint space.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """bool [B, size]: True at positions ``k < lengths[b]``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` [B, K, D] over the positions where ``mask`` [B, K] is true → [B, D].

    A row with no valid position gives zeros (the count is clamped to at least 1).
    """
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def positional_encoding(length: int, dim: int) -> torch.Tensor:
    """Sinusoidal encodings [length, dim] (``dim`` even): column 2i is sin(k / 10000^(2i/dim)),
    column 2i+1 the matching cos, for position k.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.empty(length, dim)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


class GPO(nn.Module):
    """Generalized Pooling Operator: a learned, length-aware weighting of sorted features.

    For each item b and feature dimension d, the valid values ``x[b, :lengths[b], d]`` are
    sorted in descending order; the pooled value is ``sum_k w[b, k] * sorted[b, k, d]``. The
    weights depend only on the position k and the set size: a bidirectional GRU reads the
    sinusoidal encodings of positions 0..n-1, the two directions' outputs are averaged, a
    linear map gives one score per position, and ``softmax(score / temperature)`` over the
    valid positions gives ``w``. Max pooling and mean pooling are special cases.
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        if d_pe < 2 or d_pe % 2 or d_hidden < 1 or temperature <= 0:
            raise ValueError("GPO needs an even d_pe >= 2, d_hidden >= 1 and temperature > 0")
        self.d_pe = d_pe
        self.temperature = temperature
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)

    def pool_weights(self, lengths: torch.Tensor, size: int) -> torch.Tensor:
        """float [B, size]: the weight of each sorted position; 0 beyond each length."""
        mask = length_mask(lengths, size)
        pe = positional_encoding(size, self.d_pe).to(self.score.weight).expand(len(lengths), -1, -1)
        packed = pack_padded_sequence(pe, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=size)
        forward_dir, backward_dir = out.chunk(2, dim=-1)
        scores = self.score((forward_dir + backward_dir) / 2).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores / self.temperature, dim=1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, K, D], lengths int [B] in 1..K → (pooled [B, D], weights [B, K])."""
        mask = length_mask(lengths, features.shape[1]).unsqueeze(-1)
        ranked = features.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
        ranked = torch.where(mask, ranked, torch.zeros((), dtype=ranked.dtype,
                                                       device=ranked.device))
        weights = self.pool_weights(lengths, features.shape[1])
        return (ranked * weights.unsqueeze(-1).to(ranked.dtype)).sum(1), weights


def batch_norm_last(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Apply ``bn`` to the last dimension of ``x`` [..., C], all leading dims as the batch."""
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ProjectionHead(nn.Module):
    """Map features [..., d_in] → [..., d_out] into the joint space.

    - ``standardize``: first standardise each input dimension with running batch statistics
      (``BatchNorm1d`` without affine parameters), useful for raw backbone features whose
      dimensions have very different scales.
    - ``dropout``: in training, drop input features with this probability (after
      standardising; a regulariser for heads on small sets of frozen features).
    - A Linear map, plus (when ``hidden`` is set) a residual two-layer MLP
      ``Linear(d_in, hidden) → BatchNorm → ReLU → Linear(hidden, d_out)`` as in the VSE∞
      precomputed-feature encoder.

    Batch statistics need more than one row per batch in training mode.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None,
                 standardize: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.standardize = nn.BatchNorm1d(d_in, affine=False) if standardize else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = None
        if hidden is not None:
            self.mlp = nn.ModuleDict({"fc1": nn.Linear(d_in, hidden), "bn": nn.BatchNorm1d(hidden),
                                      "fc2": nn.Linear(hidden, d_out)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = batch_norm_last(self.standardize, x)
        x = self.dropout(x)
        out = self.linear(x)
        if self.mlp is None:
            return out
        hidden = torch.relu(batch_norm_last(self.mlp["bn"], self.mlp["fc1"](x)))
        return out + self.mlp["fc2"](hidden)
