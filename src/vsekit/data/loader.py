"""Batches of caption-image pairs: a resumable epoch order and the collate step.

Training iterates over captions (one pair per caption, the VSE convention). The order of an
epoch is a permutation drawn from ``(seed, epoch)`` alone, so a run resumed at batch k of an
epoch sees exactly the batches an uninterrupted run would. With several processes (DDP) every
global batch of that order is split into equal consecutive shards, one per rank: the order,
and so the exact-resume guarantee, does not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from vsekit.data.dataset import Batch, RetrievalSplit
from vsekit.errors import require
from vsekit.models.vse import VSEModel


class EpochBatchSampler(Sampler[list[int]]):
    """Caption-index batches of one epoch, in a permutation fixed by ``(seed, epoch)``.

    ``start_batch`` skips the first batches (resume in the middle of an epoch). With
    ``num_replicas`` W > 1, ``batch_size`` is the global batch and rank ``rank`` gets its
    consecutive 1/W of every global batch (the ranks' shards, in rank order, are the batch
    one process would get); every batch must then split evenly.
    """

    def __init__(self, n_items: int, batch_size: int, *, seed: int, epoch: int,
                 shuffle: bool = True, drop_last: bool = True, start_batch: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        require(n_items > 0, "cannot build batches from an empty split")
        self.n_items, self.batch_size = n_items, batch_size
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.drop_last, self.start_batch = drop_last, start_batch
        self.num_replicas, self.rank = num_replicas, rank
        last = n_items % batch_size if not drop_last else 0
        require(batch_size % num_replicas == 0 and last % num_replicas == 0,
                f"the global batch of {batch_size} (last batch {last or batch_size}) does not "
                f"split evenly over {num_replicas} processes; use a train.batch_size divisible "
                f"by {num_replicas} (and train.drop_last: true)")

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_items)
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(self.n_items)

    def batches(self) -> list[np.ndarray]:
        """The epoch's global batches (every rank's shards together)."""
        order = self.order()
        stop = (self.n_items // self.batch_size * self.batch_size if self.drop_last
                else self.n_items)
        return [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's consecutive 1/W of a global batch."""
        size = len(batch) // self.num_replicas
        return batch[self.rank * size:(self.rank + 1) * size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.start_batch:]:
            yield self.shard(batch).tolist()

    def __len__(self) -> int:
        return len(self.batches()) - self.start_batch


def batch_seed(seed: int, epoch: int, caption_index: np.ndarray) -> int:
    """A seed fixed by the run seed, the epoch and the batch's first caption (its position in
    the epoch's permutation), so augmentation repeats exactly after a resume and differs
    between DataLoader workers."""
    return int(np.random.default_rng([seed, epoch, int(caption_index[0])]).integers(2**62))


class PairCollate:
    """Turns a list of caption indices into a :class:`Batch` using the encoders' ``prepare``.

    For training batches the image encoder's augmentation ``generator`` (if it has one) is
    reseeded per batch with :func:`batch_seed`.
    """

    def __init__(self, split: RetrievalSplit, model: VSEModel, train: bool, *, seed: int = 0,
                 epoch: int = 0) -> None:
        self.split, self.model, self.train = split, model, train
        self.seed, self.epoch = seed, epoch

    def __call__(self, caption_index: Sequence[int]) -> Batch:
        caps = np.asarray(caption_index, dtype=np.int64)
        imgs = self.split.caption_to_image[caps]
        generator = getattr(self.model.image_encoder, "generator", None)
        if self.train and isinstance(generator, torch.Generator):
            generator.manual_seed(batch_seed(self.seed, self.epoch, caps))
        return Batch(
            images=self.model.image_encoder.prepare(self.split.images, imgs, self.train),
            text=self.model.text_encoder.prepare(self.split, caps),
            image_index=torch.from_numpy(imgs),
            caption_index=torch.from_numpy(caps),
            image_ids=torch.from_numpy(self.split.image_groups[imgs]),
        )


def check_batch_size(batch_size: int, split: RetrievalSplit) -> None:
    """VsekitError when one batch would need more pairs than the split has captions."""
    require(batch_size <= split.n_captions,
            f"batch size {batch_size} is larger than the {split.n_captions} training captions; "
            f"lower train.batch_size")


def train_loader(split: RetrievalSplit, model: VSEModel, *, batch_size: int, seed: int,
                 epoch: int, start_batch: int = 0, drop_last: bool = True,
                 num_workers: int = 0, num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """Loader over the captions of ``split`` for one epoch (augmentation on); with
    ``num_replicas`` > 1, rank ``rank``'s shard of every global batch of ``batch_size``."""
    check_batch_size(batch_size, split)
    sampler = EpochBatchSampler(split.n_captions, batch_size, seed=seed, epoch=epoch,
                                drop_last=drop_last, start_batch=start_batch,
                                num_replicas=num_replicas, rank=rank)
    # The loader's own generator keeps the global RNG untouched (a resumed run creates one
    # more loader than an uninterrupted one).
    return DataLoader(range(split.n_captions), batch_sampler=sampler,
                      collate_fn=PairCollate(split, model, train=True, seed=seed, epoch=epoch),
                      num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
