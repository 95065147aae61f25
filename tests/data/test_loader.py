"""Epoch order: a permutation fixed by (seed, epoch), resumable mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest

from vsekit.data.loader import EpochBatchSampler
from vsekit.errors import VsekitError


def test_each_epoch_is_a_permutation_and_deterministic() -> None:
    a = list(EpochBatchSampler(103, 10, seed=1, epoch=0, drop_last=False))
    b = list(EpochBatchSampler(103, 10, seed=1, epoch=0, drop_last=False))
    c = list(EpochBatchSampler(103, 10, seed=1, epoch=1, drop_last=False))
    assert a == b and a != c
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert [len(x) for x in a] == [10] * 10 + [3]


def test_drop_last_and_resume_position() -> None:
    full = list(EpochBatchSampler(103, 10, seed=5, epoch=2))
    assert len(full) == 10 and all(len(x) == 10 for x in full)
    resumed = EpochBatchSampler(103, 10, seed=5, epoch=2, start_batch=7)
    assert list(resumed) == full[7:] and len(resumed) == 3


def test_empty_split() -> None:
    with pytest.raises(VsekitError, match="empty"):
        EpochBatchSampler(0, 4, seed=0, epoch=0)
