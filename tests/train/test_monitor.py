"""False-negative monitor against a loop over anchors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from vsekit.train.monitor import FalseNegativeMonitor


def make_batch(gen: torch.Generator, n_img: int = 7, n_cap: int = 21, batch: int = 9):
    image_index = torch.randint(0, n_img, (batch,), generator=gen)
    image_index[1] = image_index[0]  # two captions of one image in the batch
    caption_index = torch.randperm(n_cap, generator=gen)[:batch]
    return SimpleNamespace(image_index=image_index, caption_index=caption_index,
                           image_ids=image_index.clone())


def test_hardest_negative_rate_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    relevance = (torch.rand(7, 21, generator=gen) < 0.4).numpy()
    monitor = FalseNegativeMonitor(relevance, torch.device("cpu"))
    hits = {"i2t": 0, "t2i": 0}
    total = 0
    for _ in range(3):
        batch = make_batch(gen)
        img = torch.nn.functional.normalize(torch.randn(9, 5, generator=gen), dim=1)
        txt = torch.nn.functional.normalize(torch.randn(9, 5, generator=gen), dim=1)
        monitor.update(batch, img, txt, None)
        ids = batch.image_ids.tolist()
        for a in range(9):
            negs = [j for j in range(9) if ids[j] != ids[a]]
            j = max(negs, key=lambda j: float(img[a] @ txt[j]))
            hits["i2t"] += bool(relevance[batch.image_index[a], batch.caption_index[j]])
            i = max(negs, key=lambda i: float(img[i] @ txt[a]))
            hits["t2i"] += bool(relevance[batch.image_index[i], batch.caption_index[a]])
            total += 1
    summary = monitor.summary()
    for d in ("i2t", "t2i"):
        assert np.isclose(summary[f"true_fn_rate_{d}"], 100 * hits[d] / total)
    monitor.reset()
    assert monitor.summary() == {"true_fn_rate_i2t": 0.0, "true_fn_rate_t2i": 0.0}


def test_sampled_picks_skip_unwritten_queue_slots() -> None:
    relevance = np.zeros((3, 6), dtype=bool)
    relevance[0, 4] = relevance[2, 1] = True
    monitor = FalseNegativeMonitor(relevance, torch.device("cpu"))
    batch = SimpleNamespace(image_index=torch.tensor([0, 1]), caption_index=torch.tensor([1, 3]),
                            image_ids=torch.tensor([0, 1]))
    picks = {"i2t": SimpleNamespace(image_index=torch.tensor([2, -1]),
                                    caption_index=torch.tensor([4, -1])),
             "t2i": SimpleNamespace(image_index=torch.tensor([2, 0]),
                                    caption_index=torch.tensor([5, 0]))}
    monitor.update(batch, None, None, picks)
    # i2t: anchor image 0 picked caption 4 (a true match), anchor 1 an empty slot → 1 of 1.
    # t2i: caption 1 picked image 2 (true), caption 3 picked image 0 (false) → 1 of 2.
    assert monitor.summary() == {"true_fn_rate_i2t": 100.0, "true_fn_rate_t2i": 50.0}
