"""Memory queue: ring-buffer writes against a slot-by-slot loop, any size, checkpoints."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.errors import VsekitError
from vsekit.losses.queue import MemoryQueue

COLUMNS = ("image", "text", "ids", "image_index", "caption_index")


def fake_batch(step: int, batch: int, dim: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return {"image": torch.randn(batch, dim, generator=gen),
            "text": torch.randn(batch, dim, generator=gen),
            "ids": torch.randint(0, 50, (batch,), generator=gen),
            "image_index": torch.randint(0, 50, (batch,), generator=gen),
            "caption_index": torch.randint(0, 250, (batch,), generator=gen)}


def loop_write(state: dict[str, list], ptr: int, size: int, batch: dict[str, torch.Tensor]
               ) -> int:
    """Write rows one at a time at the pointer, wrapping around; returns the new pointer."""
    for row in range(len(batch["ids"])):
        for name in COLUMNS:
            state[name][ptr] = batch[name][row].tolist()
        ptr = (ptr + 1) % size
    return ptr


def snapshot(queue: MemoryQueue) -> dict[str, list]:
    return {name: getattr(queue, name).tolist() for name in COLUMNS}


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 9), batches=st.lists(st.integers(0, 13), min_size=1, max_size=6))
def test_writes_match_slot_by_slot_loop(size: int, batches: list[int]) -> None:
    queue = MemoryQueue(size, dim=3, seed=1)
    state, ptr = snapshot(queue), 0
    for step, batch in enumerate(batches):
        rows = fake_batch(step, batch, dim=3)
        queue.write(**rows)
        ptr = loop_write(state, ptr, size, rows)
        assert int(queue.ptr) == ptr
        for name in COLUMNS:
            torch.testing.assert_close(getattr(queue, name), torch.tensor(state[name]).to(
                getattr(queue, name).dtype), rtol=0, atol=0)


def test_batch_larger_than_queue_keeps_its_last_rows() -> None:
    queue = MemoryQueue(4, dim=2, seed=0)
    rows = fake_batch(0, 10, dim=2)
    queue.write(**rows)
    # slots (0 + j) % 4 for j = 6..9 → 2, 3, 0, 1
    assert queue.ids.tolist() == [rows["ids"][k].item() for k in (8, 9, 6, 7)]
    assert int(queue.ptr) == 10 % 4


def test_initial_state_is_seeded_random_unit_vectors_with_id_minus_one() -> None:
    queue = MemoryQueue(7, dim=5, seed=3)
    for name in ("image", "text"):
        torch.testing.assert_close(getattr(queue, name).norm(dim=1), torch.ones(7))
    assert queue.ids.tolist() == [-1] * 7
    assert queue.image_index.tolist() == [-1] * 7 and queue.caption_index.tolist() == [-1] * 7
    assert int(queue.ptr) == 0
    assert torch.equal(MemoryQueue(7, dim=5, seed=3).image, queue.image)
    assert not torch.equal(MemoryQueue(7, dim=5, seed=4).image, queue.image)
    assert not torch.equal(queue.image, queue.text)


def test_empty_queue_is_allowed_and_never_changes() -> None:
    queue = MemoryQueue(0, dim=4)
    assert queue.size == 0 and queue.image.shape == (0, 4)
    queue.write(**fake_batch(0, 5, dim=4))
    assert queue.size == 0 and int(queue.ptr) == 0


def test_state_dict_round_trip() -> None:
    queue = MemoryQueue(6, dim=3, seed=0)
    queue.write(**fake_batch(0, 4, dim=3))
    queue.write(**fake_batch(1, 4, dim=3))
    restored = MemoryQueue(6, dim=3, seed=99)
    restored.load_state_dict(queue.state_dict())
    for name in (*COLUMNS, "ptr"):
        assert torch.equal(getattr(restored, name), getattr(queue, name))


def test_write_detaches_and_casts() -> None:
    queue = MemoryQueue(3, dim=2)
    rows = fake_batch(0, 2, dim=2)
    rows["image"] = rows["image"].double().requires_grad_()
    queue.write(**rows)
    assert queue.image.dtype == torch.float32 and not queue.image.requires_grad


@pytest.mark.parametrize("size, dim", [(-1, 4), (4, 0)])
def test_bad_sizes_raise_one_line_errors(size: int, dim: int) -> None:
    with pytest.raises(VsekitError, match="queue"):
        MemoryQueue(size, dim)
