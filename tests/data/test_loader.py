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


@pytest.mark.parametrize("drop_last, n_items", [(True, 103), (False, 100), (False, 108)])
def test_replica_shards_rebuild_the_one_process_batches(drop_last: bool, n_items: int) -> None:
    """Rank r gets the r-th consecutive quarter of each global batch; together, in rank order,
    they are exactly one process's batches, also when resumed mid-epoch."""
    for start in (0, 3):
        single = list(EpochBatchSampler(n_items, 8, seed=4, epoch=1, drop_last=drop_last,
                                         start_batch=start))
        shards = [EpochBatchSampler(n_items, 8, seed=4, epoch=1, drop_last=drop_last,
                                    start_batch=start, num_replicas=4, rank=r) for r in range(4)]
        assert all(len(s) == len(single) for s in shards)
        for k, batch in enumerate(single):
            parts = [list(s)[k] for s in shards]
            assert all(len(p) == len(batch) // 4 for p in parts)
            assert sum(parts, []) == batch


@pytest.mark.parametrize("batch_size, n_items, drop_last", [(6, 100, True), (8, 103, False)])
def test_uneven_shards_are_a_clear_error(batch_size: int, n_items: int, drop_last: bool) -> None:
    with pytest.raises(VsekitError, match="does not split evenly over 4 processes"):
        EpochBatchSampler(n_items, batch_size, seed=0, epoch=0, drop_last=drop_last,
                          num_replicas=4, rank=0)
